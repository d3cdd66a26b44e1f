"""The one place that turns a run config into objects: the network and the trained module.

API (every entry point builds through it: `train`, `evaluate`, `predict`, `postprocess_select`, the
explanations):

- `build_net(model_cfg)`: the `nn.Module` of a `conf/model/*.yaml` node. Model configs may carry
  metadata that is not a constructor argument, such as `explain_layer` (the default Grad-CAM
  target layer); those keys are dropped before `hydra.utils.instantiate`.
- `build_module(cfg, output_dir=None, net=None)`: the `SegmentationModule` of a run config (loss,
  optimizer, scheduler, classifier-loss weights, channels_last, and the `inference` node as one
  `InferenceSettings`), carrying the resolved config so every checkpoint can be rebuilt. `net`
  replaces the config's network (e.g. a `torch.compile`d one).
- `load_module(path, cfg=None)`: `(module, cfg)`: the trained module of a checkpoint file, in eval
  mode on the CPU, built from `cfg` (the checkpoint's stored config with the caller's overrides,
  e.g. from `lesionseg.app_config`) or, by default, from the config the checkpoint carries.
  Reading goes through `lesionseg.checkpoints.load_checkpoint` (UsageError naming the file when it
  is missing, damaged or not a lesionseg checkpoint).

```python
from lesionseg.factory import load_module
module, cfg = load_module("outputs/2026-12-01/10-00-00/checkpoints/last.ckpt")
logits = module.net(image)             # (B, C, H, W) -> (B, K, H, W), as in training
print(module.inference.threshold)      # InferenceSettings
```
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lesionseg.inference.settings import InferenceSettings

if TYPE_CHECKING:
    from lesionseg.module import SegmentationModule

# Keys of a model config that describe the model to other tools and are not passed to its constructor.
MODEL_METADATA_KEYS = ("explain_layer",)


def model_arguments(model_cfg: DictConfig) -> DictConfig:
    """The model config, interpolations resolved (`${data.in_channels}`), without its metadata keys (a copy)."""
    values = OmegaConf.to_container(model_cfg, resolve=True)
    assert isinstance(values, dict)
    return OmegaConf.create({key: value for key, value in values.items() if key not in MODEL_METADATA_KEYS})


def build_net(model_cfg: DictConfig) -> nn.Module:
    """The network of `model_cfg` (a `conf/model/*.yaml` node), randomly initialised unless it names weights."""
    return hydra.utils.instantiate(model_arguments(model_cfg))


def build_module(cfg: DictConfig, output_dir: Path | str | None = None, net: nn.Module | None = None) -> SegmentationModule:
    """The LightningModule of a run config, carrying the resolved config for every later entry point."""
    from lesionseg.module import SegmentationModule  # the module imports the inference package; keep this file light

    return SegmentationModule(
        net=build_net(cfg.model) if net is None else net,
        loss=hydra.utils.instantiate(cfg.loss),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        num_classes=cfg.data.num_classes,
        cls_loss_weight=cfg.cls_loss_weight,
        cls_pos_weight=cfg.get("cls_pos_weight"),
        channels_last=cfg.channels_last,
        inference=InferenceSettings.from_config(cfg),
        run_config=cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)),
    )


def load_module(path: Path | str, cfg: DictConfig | None = None) -> tuple[SegmentationModule, DictConfig]:
    """The trained module of checkpoint `path` (eval mode, CPU) and the config it was built from."""
    from lesionseg.checkpoints import load_checkpoint

    checkpoint, stored = load_checkpoint(Path(path).expanduser())
    cfg = stored if cfg is None else cfg
    module = build_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), cfg
