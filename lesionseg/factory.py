"""The one place that turns a run config into objects: the network now, the trained module next.

Model configs (`conf/model/*.yaml`) may carry metadata that is not a constructor argument, such as
`explain_layer` (the default Grad-CAM target layer): `build_net` drops those keys before
`hydra.utils.instantiate`, so every entry point builds the network the same way.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

# Keys of a model config that describe the model to other tools and are not passed to its constructor.
MODEL_METADATA_KEYS = ("explain_layer",)


def model_arguments(model_cfg: DictConfig) -> DictConfig:
    """The model config without its metadata keys (a copy; the run config keeps them)."""
    arguments = OmegaConf.masked_copy(model_cfg, [str(key) for key in model_cfg.keys() if key not in MODEL_METADATA_KEYS])
    assert isinstance(arguments, DictConfig)
    return arguments


def build_net(model_cfg: DictConfig) -> nn.Module:
    """The network of `model_cfg` (a `conf/model/*.yaml` node), randomly initialised unless it names weights."""
    return hydra.utils.instantiate(model_arguments(model_cfg))
