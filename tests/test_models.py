"""The contract every model config keeps, checked over `lesionseg.models.catalog.CATALOG`.

Each model is built the way a run builds it: compose `conf/train.yaml` with `model=<config>`,
then `lesionseg.factory.build_net(cfg.model)`. Then: its parameter count matches the paper, its
logits have the input's size for any input size, every parameter learns (finite gradients, the
loss falls in a few Adam steps on one batch), and it runs in channels_last and under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from hydra_helpers import compose_train
from torch import nn

from lesionseg.factory import build_net
from lesionseg.models.catalog import CATALOG, PaperFigure
from lesionseg.models.measure import count_parameters

OUTPUT_SIZES = [(224, 192), (233, 197), (256, 256)]
TRAIN_SIZE = (64, 64)  # the smallest size every catalog model downsamples without degenerate maps
ADAM_STEPS = 3


@pytest.fixture(params=CATALOG, ids=lambda entry: entry.config)
def entry(request: pytest.FixtureRequest) -> PaperFigure:
    return request.param


def build_model(entry: PaperFigure) -> nn.Module:
    """Instantiate the model of `entry` from the composed run config, with a fixed seed."""
    overrides = [
        f"model={entry.config}",
        f"data.in_channels={entry.in_channels}",
        f"data.num_classes={entry.num_classes}",
        *entry.overrides,
    ]
    cfg = compose_train(overrides)
    torch.manual_seed(0)
    return build_net(cfg.model)


def split_output(output: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(segmentation logits, classification logits or None) of a model's output."""
    if isinstance(output, dict):
        return output["seg"], output.get("cls")
    return output, None


@pytest.mark.parametrize("entry", [e for e in CATALOG if e.target_params is not None], ids=lambda e: e.config)
def test_parameter_count_matches_paper(entry: PaperFigure) -> None:
    count = count_parameters(build_model(entry))
    if entry.tolerance == 0:
        assert count == entry.target_params
    else:
        relative_error = abs(count - entry.target_params) / entry.target_params
        assert relative_error <= entry.tolerance, f"{count:,} vs {entry.target_params:,} ({relative_error:.2%})"


@pytest.mark.slow  # full-size models: the slow lane
def test_logits_have_the_input_size(entry: PaperFigure) -> None:
    model = build_model(entry).eval()
    for height, width in OUTPUT_SIZES:
        with torch.no_grad():
            seg, cls = split_output(model(torch.randn(1, entry.in_channels, height, width)))
        assert seg.shape == (1, entry.num_classes, height, width)
        assert torch.isfinite(seg).all()
        if cls is not None:
            assert cls.shape == (1, 1)


def fixed_batch(entry: PaperFigure) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images with a bright square 'lesion' and its mask (class index 1, or 1..K-1 cycling)."""
    generator = torch.Generator().manual_seed(0)
    height, width = TRAIN_SIZE
    images = torch.randn(2, entry.in_channels, height, width, generator=generator)
    masks = torch.zeros(2, height, width, dtype=torch.int64)
    masks[0, 10:30, 12:40] = 1
    masks[1, 35:60, 5:25] = max(entry.num_classes - 1, 1)
    images += 2.0 * (masks > 0).unsqueeze(1)
    return images, masks


def batch_loss(output: torch.Tensor | dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """BCE for one logit channel, CE otherwise, plus BCE on 'lesion present' for a cls head."""
    seg, cls = split_output(output)
    if seg.shape[1] == 1:
        loss = F.binary_cross_entropy_with_logits(seg[:, 0], masks.float())
    else:
        loss = F.cross_entropy(seg, masks)
    if cls is not None:
        loss = loss + F.binary_cross_entropy_with_logits(cls[:, 0], masks.flatten(1).any(1).float())
    return loss


def training_loss(entry: PaperFigure) -> Callable[..., torch.Tensor]:
    """The model's own loss (e.g. a set-prediction loss) when the catalog names one, else `batch_loss`."""
    if entry.loss is None:
        return batch_loss
    return instantiate(compose_train([f"model={entry.config}", f"loss={entry.loss}", f"data.num_classes={entry.num_classes}"]).loss)


@pytest.mark.slow  # full-size models: the slow lane
def test_every_parameter_learns(entry: PaperFigure) -> None:
    model = build_model(entry).train()
    images, masks = fixed_batch(entry)
    criterion = training_loss(entry)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(ADAM_STEPS + 1):
        optimizer.zero_grad()
        loss = criterion(model(images), masks)
        losses.append(loss.item())
        if step == ADAM_STEPS:
            break
        loss.backward()
        if step == 0:
            no_gradient = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not no_gradient, f"parameters without gradient: {no_gradient[:5]}"
            not_finite = [name for name, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
            assert not not_finite, f"non-finite gradients: {not_finite[:5]}"
        optimizer.step()
    assert losses[-1] < losses[0], f"loss did not fall over {ADAM_STEPS} Adam steps: {losses}"


@pytest.mark.slow  # full-size models: the slow lane
def test_channels_last_and_bfloat16_autocast(entry: PaperFigure) -> None:
    model = build_model(entry).eval()
    images = torch.randn(1, entry.in_channels, 72, 56)  # not a multiple of any stride: exercises padding
    with torch.no_grad():
        reference, _ = split_output(model(images))
        model = model.to(memory_format=torch.channels_last)
        channels_last, _ = split_output(model(images.to(memory_format=torch.channels_last)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = split_output(model(images))
    # Eval-mode BatchNorm with fresh statistics normalises nothing: He-initialised nets (X-Net's Keras init)
    # reach logits in the hundreds, where summation order alone moves the last digits.
    torch.testing.assert_close(channels_last, reference, rtol=1e-3, atol=max(1e-3, 1e-5 * reference.abs().max().item()))
    assert half.shape == reference.shape
    assert torch.isfinite(half).all()
