"""The trained members an explanation runs on, and the tensors of theirs that are explained.

`load_predictor` is the one adapter between this package and the project's inference code: the
`Predictor` of the checkpoints (members built by `lesionseg.factory`, one preprocessing path, mean
probabilities, threshold / gate / clean-up), whose members are then explained. An ensemble (several checkpoints) is
explained member by member; its prediction is the mean of the members' probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lesionseg.config import CONF_DIR, UsageError
from lesionseg.inference.predictor import Predictor
from lesionseg.module import SegmentationModule, split_output

OUTPUTS = ("seg", "cls")


@dataclass
class Member:
    """One trained model: its checkpoint, run config and `SegmentationModule` (eval mode)."""

    path: Path
    config: DictConfig
    module: SegmentationModule


def load_predictor(paths: Sequence[Path], device: str, batch_size: int) -> tuple[Predictor, list[Member]]:
    """The `Predictor` of the checkpoints (an ensemble when several) and its members with their run configs."""
    predictor = Predictor.from_checkpoints(list(paths), device=device, batch_size=batch_size)
    members = [Member(path, OmegaConf.create(module.run_config or {}), module) for path, module in zip(paths, predictor.members)]
    return predictor, members


def explain_layer(member: Member, requested: str | None) -> str:
    """The target layer: `explain.layer`, else the model config's `explain_layer`, else the current default."""
    if requested:
        return requested
    layer = OmegaConf.select(member.config, "model.explain_layer")
    if layer:
        return str(layer)
    name = member.config.get("model_name")
    current = CONF_DIR / "model" / f"{name}.yaml"  # a checkpoint written before the key existed
    if name and current.is_file():
        layer = OmegaConf.select(OmegaConf.load(current), "explain_layer")
        if layer:
            return str(layer)
    raise UsageError(f"{member.path}: its model config names no explain_layer; pass explain.layer=<module name>")


def find_layer(member: Member, name: str) -> nn.Module:
    """The module of the member's network called `name` (dotted), or a one-line UsageError."""
    net = member.module.net
    try:
        return net.get_submodule(name)
    except AttributeError:
        top = ", ".join(child for child, _ in net.named_children())
        raise UsageError(f"explain.layer={name}: no such module in {member.config.get('model_name')} ({member.path.name}); top-level modules: {top}") from None


class ExplainedOutput(nn.Module):
    """A member's network reduced to the tensor being explained: segmentation logits or the `cls` logit."""

    def __init__(self, module: SegmentationModule, output: str) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise UsageError(f"explain.output={output}: use seg or cls")
        self.module = module
        self.output = output

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        seg, cls = split_output(self.module(image))
        if self.output == "seg":
            return seg.float()
        if cls is None:
            raise UsageError("explain.output=cls: this model has no classifier head")
        return cls.float()


class MeanProbabilityEnsemble(nn.Module):
    """Members' explained outputs averaged as probabilities, returned as logits of the mean."""

    def __init__(self, members: Sequence[nn.Module], multiclass: bool) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.multiclass = multiclass

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        outputs = [member(image) for member in self.members]
        if len(outputs) == 1:
            return outputs[0]
        if self.multiclass and outputs[0].ndim == 4:
            return torch.stack([output.softmax(dim=1) for output in outputs]).mean(dim=0).clamp_min(1e-7).log()
        return torch.logit(torch.stack([output.sigmoid() for output in outputs]).mean(dim=0), eps=1e-7)
