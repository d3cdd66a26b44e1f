"""`python -m lesionseg.explain`: saliency maps for every model, their scores, sanity check and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra_helpers import compose_train
from omegaconf import OmegaConf

from lesionseg.config import available_options
from lesionseg.explanations.methods import ExplainedModel, MethodSettings, compute_maps
from lesionseg.explanations.models import ExplainedOutput
from lesionseg.explanations.targets import MASK, Target
from lesionseg.factory import build_net

# The smallest widths each config allows (the target layer's name does not depend on them).
TINY_WIDTHS = {
    "unet": ["model.base_channels=4"],
    "unet_small": ["model.base_channels=4"],
    "xnet": ["model.base_channels=4"],
    "resunet": ["model.base_channels=4"],
    "unext": ["model.conv_widths=[4,8,16]", "model.token_widths=[16,32]"],
    "unext_s": ["model.conv_widths=[4,8,16]", "model.token_widths=[16,32]"],
    "deeplabv3plus": ["model.encoder_name=resnet18"],
    "smp": ["model.encoder_name=resnet18"],
    "dynunet": ["model.patch_size=[64,48]"],
    "maskdino": ["model.hidden_dim=32", "model.feedforward_dim=64", "model.encoder_layers=1", "model.decoder_layers=1"],
}


@pytest.mark.parametrize("model", available_options("model"))
def test_every_model_config_has_a_working_default_layer(model: str) -> None:
    cfg = compose_train([f"model={model}", *TINY_WIDTHS.get(model, [])])
    layer_name = OmegaConf.select(cfg, "model.explain_layer")
    assert layer_name, f"conf/model/{model}.yaml sets no explain_layer"
    torch.manual_seed(0)
    net = build_net(OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))).eval()
    image = torch.randn(2, cfg.data.in_channels, 64, 48)
    weights = np.zeros((64, 48), dtype=np.float32)
    weights[20:40, 10:30] = 1.0
    targets = [Target(weights, MASK)] * 2
    explained = [ExplainedModel(ExplainedOutput(net, "seg"), net.get_submodule(layer_name), layer_name)]
    for method in ("gradcam", "gradcampp"):
        maps = compute_maps(method, explained, image, targets, MethodSettings())
        assert maps.shape == (2, 64, 48)
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
