"""Shared test fixtures: an isolated cache and output folder, and Hydra config composition.

`train_config(...)` composes `conf/train.yaml` exactly as the command line would (same defaults,
same overrides), with Hydra's runtime filled in so `${hydra:...}` interpolations resolve, and points
every output into a temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra_helpers import compose_train
from inference_fixtures import second_checkpoint, tiny_run  # noqa: F401  (session fixtures shared by the after-training tests)
from omegaconf import DictConfig

from lesionseg.config import register_resolvers

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
register_resolvers()


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each test session (each xdist worker) generates its synthetic data in its own cache."""
    cache = tmp_path_factory.mktemp("lesionseg-cache")
    previous = os.environ.get("LESIONSEG_CACHE")
    os.environ["LESIONSEG_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("LESIONSEG_CACHE", None)
    else:
        os.environ["LESIONSEG_CACHE"] = previous


@pytest.fixture
def train_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """Factory: `train_config("model=unet_small", ...)` -> composed config writing under tmp_path."""

    def factory(*overrides: str) -> DictConfig:
        return compose_train(overrides, tmp_path / "run")

    yield factory
    GlobalHydra.instance().clear()
