"""Measuring a network: its trainable parameters (the project's one counter), its MACs, and the
catalog's configs composed for measuring (`python -m lesionseg.models`, `python -m lesionseg.bench models`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lesionseg.config import CONF_DIR
from lesionseg.models.catalog import PaperFigure


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (those with `requires_grad`), the figure papers quote."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def multiply_accumulates(model: nn.Module, in_channels: int, input_size: tuple[int, int]) -> int:
    """MACs of one eval-mode forward pass on a single image (convolutions, linear layers and
    matrix products, as torch's FLOP counter counts them: FLOPs / 2)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, in_channels, *input_size))
    return counter.get_total_flops() // 2


def model_configs(entries: Sequence[PaperFigure]) -> Iterator[tuple[PaperFigure, DictConfig]]:
    """Compose `conf/train.yaml` with each entry's model config, channels, classes and overrides;
    yield each entry with its model node, resolved (it builds on its own)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for entry in entries:
            cfg = compose(
                "train",
                overrides=[
                    f"model={entry.config}",
                    f"data.in_channels={entry.in_channels}",
                    f"data.num_classes={entry.num_classes}",
                    *entry.overrides,
                ],
            )
            resolved = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))  # data.* interpolations filled in
            assert isinstance(resolved, DictConfig)
            yield entry, resolved
