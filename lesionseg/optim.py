"""The optimizer of a run, with optional parameter groups chosen by name and kind from the config.

An optimizer config (`conf/optimizer/*.yaml`, a Hydra `_partial_: true` node) may carry
`param_groups`: a list of groups, each selecting parameters and setting their options. Released
recipes need this where a framework regularises only some tensors (Keras `kernel_regularizer`
decays conv kernels, never biases or BatchNorm) or trains a pretrained backbone at a lower rate:

```yaml
optimizer:
  weight_decay: 0.0                  # every parameter no group selects
  param_groups:
    - kinds: [conv_weight]           # conv kernels only ...
      exclude: '^net\\.head\\.'      # ... but not the output conv
      weight_decay: 2.0e-5
    - names: '^net\\.backbone\\.'    # regex, searched in the parameter's name
      lr_scale: 0.1                  # the optimizer's lr times 0.1
```

A parameter joins the first group that selects it (`names` matches, `exclude` does not, its kind
is in `kinds`; an absent key selects everything); the rest keep the optimizer's own options. Every
other key of a group is an optimizer option for that group (`weight_decay`, `lr`, `momentum`, ...);
`lr_scale` multiplies the optimizer's learning rate. Names are those of the LightningModule's
`named_parameters()` (the network's start with `net.`). A group that selects nothing is an error
(a typo would otherwise silently train with the defaults).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

PARAMETER_KINDS = ("conv_weight", "linear_weight", "bias", "norm", "other")
"""conv_weight: the kernel of any convolution (transposed and depthwise too); linear_weight: the
matrix of an `nn.Linear`; bias: the bias of a convolution or linear layer; norm: the scale and
shift of a normalisation layer (BatchNorm, GroupNorm, LayerNorm, InstanceNorm); other: the rest."""

SELECTOR_KEYS = ("names", "exclude", "kinds")
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def parameter_kind(module: nn.Module, attribute: str) -> str:
    """The kind (one of `PARAMETER_KINDS`) of `module`'s parameter called `attribute`."""
    if isinstance(module, NORM_LAYERS):
        return "norm"
    if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
        if attribute == "bias":
            return "bias"
        if attribute == "weight":
            return "conv_weight" if isinstance(module, nn.modules.conv._ConvNd) else "linear_weight"
    return "other"


def named_parameter_kinds(model: nn.Module) -> Iterable[tuple[str, nn.Parameter, str]]:
    """(name, parameter, kind) of every trainable parameter of `model`, in `named_parameters()` order."""
    for module_name, module in model.named_modules():
        for attribute, parameter in module.named_parameters(recurse=False):
            if parameter.requires_grad:
                yield (f"{module_name}.{attribute}" if module_name else attribute), parameter, parameter_kind(module, attribute)


def selects(group: Mapping[str, Any], name: str, kind: str) -> bool:
    """Whether `group`'s selector keys take the parameter `name` of `kind`."""
    if "names" in group and not re.search(group["names"], name):
        return False
    if "exclude" in group and re.search(group["exclude"], name):
        return False
    return "kinds" not in group or kind in group["kinds"]


def parameter_groups(model: nn.Module, groups: Iterable[Mapping[str, Any]], lr: float | None = None) -> list[dict[str, Any]]:
    """torch.optim parameter groups for `model`: one per configured group, then the unselected rest.

    Raises ValueError (naming `optimizer.param_groups[i]`) for an unknown kind, an `lr_scale`
    without a base `lr`, or a group that selects no parameter.
    """
    specs = [dict(OmegaConf.to_container(group) if OmegaConf.is_config(group) else group) for group in groups]  # type: ignore[arg-type]
    for index, spec in enumerate(specs):
        unknown = sorted(set(spec.get("kinds", [])) - set(PARAMETER_KINDS))
        if unknown:
            raise ValueError(f"optimizer.param_groups[{index}].kinds: unknown {unknown}; known: {', '.join(PARAMETER_KINDS)}")
        if "lr_scale" in spec and lr is None:
            raise ValueError(f"optimizer.param_groups[{index}].lr_scale needs the optimizer's lr")
    selected: list[list[nn.Parameter]] = [[] for _ in specs]
    rest: list[nn.Parameter] = []
    for name, parameter, kind in named_parameter_kinds(model):
        chosen = next((index for index, spec in enumerate(specs) if selects(spec, name, kind)), None)
        (rest if chosen is None else selected[chosen]).append(parameter)
    result = []
    for index, (spec, params) in enumerate(zip(specs, selected)):
        if not params:
            raise ValueError(f"optimizer.param_groups[{index}] selects no trainable parameter: {spec}")
        options = {key: value for key, value in spec.items() if key not in (*SELECTOR_KEYS, "lr_scale")}
        if "lr_scale" in spec:
            options["lr"] = lr * spec["lr_scale"]
        result.append({"params": params, **options})
    if rest:
        result.append({"params": rest})
    return result


def default_lr(optimizer_class: Callable[..., Any]) -> float | None:
    """The `lr` default of an optimizer class's constructor, if it has a numeric one."""
    parameter = inspect.signature(optimizer_class).parameters.get("lr")
    default = None if parameter is None else parameter.default
    return float(default) if isinstance(default, int | float) else None


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], model: nn.Module) -> torch.optim.Optimizer:
    """Complete an optimizer factory (a Hydra partial) with `model`'s trainable parameters.

    A `param_groups` keyword on the partial is taken off and turned into parameter groups.
    """
    if not isinstance(factory, functools.partial) or "param_groups" not in factory.keywords:
        return factory(params=[parameter for parameter in model.parameters() if parameter.requires_grad])
    keywords = dict(factory.keywords)
    groups = keywords.pop("param_groups") or []
    # The same kind of partial without `param_groups` (Hydra's subclass keeps its call-time checks).
    without_groups = type(factory)(factory.func, *factory.args, **keywords)
    without_groups.__dict__.update(factory.__dict__)
    lr = keywords.get("lr", default_lr(factory.func))
    return without_groups(params=parameter_groups(model, groups, lr))
