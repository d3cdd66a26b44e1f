"""Compose `conf/train.yaml` in tests exactly as the command line would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lesionseg.config import CONF_DIR, register_resolvers


def compose_train(overrides: Sequence[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml with `overrides`, Hydra runtime set, outputs under `output_dir`."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg
