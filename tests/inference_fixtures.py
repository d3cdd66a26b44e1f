"""One tiny trained run shared by the after-training tests (predict, evaluate, inference), and a second
checkpoint made from it: the same config with perturbed weights (a different ensemble member)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = (
    "data.num_training=10",
    "data.num_testing=2",
    "data.volume_shape=[64,64,16]",
    "data.num_workers=0",
    "model.base_channels=8",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=6",
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """summary.json of a 2-epoch unet_small run on 10+2 synthetic 64x64x16 subjects (2 test subjects)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra_helpers import compose_train

    from lesionseg.training import train

    cfg = compose_train(TINY, tmp_path_factory.mktemp("tiny-run") / "run")
    _, summary = train(cfg)
    GlobalHydra.instance().clear()
    return summary


@pytest.fixture(scope="session")
def second_checkpoint(tiny_run: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_run's best checkpoint with every float weight perturbed (content hash rewritten)."""
    from lesionseg.checkpoints import CONFIG_KEY, HASH_KEY, content_hash

    checkpoint = torch.load(tiny_run["best_checkpoint"], map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(1)
    for name, value in checkpoint["state_dict"].items():
        if value.is_floating_point() and "running" not in name:
            checkpoint["state_dict"][name] = value + 0.05 * value.std().nan_to_num() * torch.randn(value.shape, generator=generator)
    checkpoint[HASH_KEY] = content_hash(checkpoint["state_dict"], checkpoint[CONFIG_KEY])
    path = tmp_path_factory.mktemp("member") / "second.ckpt"
    torch.save(checkpoint, path)
    return path
