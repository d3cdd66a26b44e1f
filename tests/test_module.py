"""`SegmentationModule` behaviour that no single model test shows: deep supervision, classifier gating."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from lesionseg.inference.settings import InferenceSettings
from lesionseg.losses import Dice
from lesionseg.module import SegmentationModule


class TwoHeads(nn.Module):
    """A model whose main and auxiliary heads have separate parameters, as deep supervision sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Conv2d(1, 1, 1)
        self.auxiliary = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.main(x), "deep_supervision": self.auxiliary(x)[:, :, None]}


class FixedOutput(nn.Module):
    """Returns preset segmentation and classification logits (B = 2 slices of 4x4)."""

    def __init__(self, cls_logits: list[float]) -> None:
        super().__init__()
        self.cls_logits = torch.tensor(cls_logits)[:, None]
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": torch.full((len(x), 1, 4, 4), 5.0) + self.weight, "cls": self.cls_logits}


def module_for(net: nn.Module, **kwargs) -> SegmentationModule:
    return SegmentationModule(net=net, loss=Dice(num_classes=1), optimizer=partial(torch.optim.SGD, lr=0.1), **kwargs)


def test_deep_supervision_trains_the_main_head_and_every_auxiliary_head() -> None:
    module = module_for(TwoHeads())
    module.log = lambda *args, **kwargs: None  # no trainer attached
    module.log_dict = lambda *args, **kwargs: None
    batch = {"image": torch.randn(2, 1, 8, 8), "mask": (torch.rand(2, 8, 8) > 0.5).long()}
    loss = module.training_step(batch, 0)
    loss.backward()
    assert module.net.main.weight.grad.abs().sum() > 0
    assert module.net.auxiliary.weight.grad.abs().sum() > 0
    main_only = module.loss(module.net.main(batch["image"]), batch["mask"])
    assert not torch.isclose(loss, main_only)  # the auxiliary heads count too


def test_classifier_gate_empties_slices_the_classifier_rejects() -> None:
    image = torch.zeros(2, 1, 4, 4)
    gated = module_for(FixedOutput([-4.0, 4.0]), inference=InferenceSettings(cls_gate=0.5)).eval()
    output = gated.predict_step({"image": image, "subject": ["a", "a"], "slice_index": torch.arange(2)}, 0)
    assert output["mask"][0].sum() == 0 and output["mask"][1].sum() == 16
    ungated = module_for(FixedOutput([-4.0, 4.0])).eval()
    output = ungated.predict_step({"image": image, "subject": ["a", "a"], "slice_index": torch.arange(2)}, 0)
    assert output["mask"].sum() == 32


def test_deep_supervision_weights_halve_per_level_and_sum_to_one() -> None:
    module = module_for(TwoHeads())
    image, mask = torch.randn(2, 1, 8, 8), (torch.rand(2, 8, 8) > 0.5).long()
    output = module.net(image)
    main, auxiliary = output["seg"], output["deep_supervision"]
    losses = [module.loss(main, mask), module.loss(auxiliary[:, 0], mask), module.loss(auxiliary[:, 1], mask)]
    expected = (4 * losses[0] + 2 * losses[1] + losses[2]) / 7  # weights 1, 1/2, 1/4 normalised
    assert torch.isclose(module.deep_supervision_loss(main, auxiliary, mask), expected)
