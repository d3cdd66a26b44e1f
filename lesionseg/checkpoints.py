"""Checkpoints as the entry points after training read them: the model, its config, a fresh output folder.

A checkpoint written by `lesionseg.train` carries its resolved run config (`lesionseg_config`), so
`lesionseg.evaluate` and `lesionseg.predict` rebuild the exact model, preprocessing and inference
settings it was trained with, and only what the user overrides on the command line changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lesionseg.config import UsageError
from lesionseg.factory import build_module
from lesionseg.module import SegmentationModule


def parse_key_values(arguments: Sequence[str], own_keys: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Split `key=value` words into the entry point's own keys and the remaining config overrides."""
    own: dict[str, str] = {}
    overrides = []
    for argument in arguments:
        key, separator, value = argument.partition("=")
        if not separator:
            raise UsageError(f"expected key=value, got '{argument}'")
        if key in own_keys:
            own[key] = value
        else:
            overrides.append(argument)
    return own, overrides


def load_checkpoint(path: Path) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint and the run config it carries; UsageError naming the file otherwise."""
    if not path.is_file():
        raise UsageError(f"ckpt_path: checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UsageError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or "lesionseg_config" not in checkpoint:
        raise UsageError(f"{path}: checkpoint carries no lesionseg config (was it written by lesionseg.train?)")
    return checkpoint, OmegaConf.create(checkpoint["lesionseg_config"])


def merged_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The checkpoint's config with `key=value` overrides applied; UsageError on a malformed one."""
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except Exception as error:
        raise UsageError(f"bad override in {' '.join(overrides)}: {error}") from error


def restore_module(checkpoint: dict[str, Any], cfg: DictConfig, output_dir: Path | None) -> SegmentationModule:
    """The trained `SegmentationModule` of `checkpoint`, built from `cfg` (inference settings included)."""
    module = build_module(cfg, output_dir)
    module.load_state_dict(checkpoint["state_dict"])
    return module


def new_output_dir(checkpoint_path: Path, requested: Path | None, kind: str) -> Path:
    """A folder that is new or empty (default `<run folder>/<kind>/<timestamp>/`); never a user's full one."""
    folder = requested or checkpoint_path.resolve().parent.parent / kind / time.strftime("%Y-%m-%d_%H-%M-%S")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"output_dir {folder} exists and is not empty; choose another")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
