"""Recipes as the released code trains them: parameter groups, Keras initialisation, Buda's U-Net."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from lesionseg.optim import build_optimizer, parameter_kind


class Small(nn.Module):
    """Conv -> BN -> depthwise conv, a 1x1 conv, a linear layer and a `head` conv: every parameter kind."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, groups=4, bias=False))
        self.neck = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Conv2d(4, 1, 1)
        self.scale = nn.Parameter(torch.ones(()))


def test_parameter_kinds_cover_convolutions_norms_biases_and_linear_layers() -> None:
    model = Small()
    kinds = {name: parameter_kind(model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]) for name, _ in model.named_parameters()}
    assert kinds == {
        "backbone.0.weight": "conv_weight",
        "backbone.0.bias": "bias",
        "backbone.1.weight": "norm",
        "backbone.1.bias": "norm",
        "backbone.2.weight": "conv_weight",
        "neck.weight": "conv_weight",
        "neck.bias": "bias",
        "fc.weight": "linear_weight",
        "fc.bias": "bias",
        "head.weight": "conv_weight",
        "head.bias": "bias",
        "scale": "other",
    }


def test_param_groups_from_config_set_decay_and_lr_scale_first_match_wins() -> None:
    model = Small()
    groups = OmegaConf.create(
        [
            {"names": r"^backbone\.", "lr_scale": 0.1},
            {"kinds": ["conv_weight"], "exclude": r"^head\.", "weight_decay": 2e-5},
            {"kinds": ["conv_weight", "linear_weight"], "weight_decay": 1e-3},
        ]
    )
    optimizer = build_optimizer(partial(torch.optim.Adam, lr=1e-3, weight_decay=0.0, param_groups=groups), model)
    by_parameter = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    backbone = [named[name] for name in ("backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias", "backbone.2.weight")]
    assert all(by_parameter[id(p)]["lr"] == pytest.approx(1e-4) and by_parameter[id(p)]["weight_decay"] == 0.0 for p in backbone)
    assert by_parameter[id(named["neck.weight"])]["weight_decay"] == 2e-5
    assert by_parameter[id(named["head.weight"])]["weight_decay"] == 1e-3  # excluded from group 1, caught by group 2
    assert by_parameter[id(named["fc.weight"])]["weight_decay"] == 1e-3
    for name in ("neck.bias", "head.bias", "fc.bias", "scale"):  # the rest keeps the optimizer's own options
        assert by_parameter[id(named[name])]["weight_decay"] == 0.0 and by_parameter[id(named[name])]["lr"] == 1e-3
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(named)


def test_param_groups_that_select_nothing_or_name_an_unknown_kind_are_errors() -> None:
    with pytest.raises(ValueError, match=r"optimizer.param_groups\[0\] selects no trainable parameter"):
        build_optimizer(partial(torch.optim.SGD, lr=0.1, param_groups=[{"names": "encoder", "lr_scale": 0.1}]), Small())
    with pytest.raises(ValueError, match=r"optimizer.param_groups\[0\].kinds: unknown \['kernel'\]"):
        build_optimizer(partial(torch.optim.SGD, lr=0.1, param_groups=[{"kinds": ["kernel"]}]), Small())


def test_optimizer_without_param_groups_gets_every_trainable_parameter() -> None:
    model = Small()
    model.scale.requires_grad_(False)
    optimizer = build_optimizer(partial(torch.optim.SGD, lr=0.1), model)
    assert len(optimizer.param_groups) == 1 and len(optimizer.param_groups[0]["params"]) == 11
