"""What the X-Net paper's models take from their sources, beyond the generic contract of test_models.py.

Counts are checked on the meta device (shapes only, no memory or compute) where no forward is needed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import densenet161, vgg16_bn

from lesionseg.models.blocks import crop_to, pad_to_multiple
from lesionseg.models.dense_unet import DenseUNet
from lesionseg.models.measure import count_parameters
from lesionseg.models.resunet import ResidualUnit, ResUNet
from lesionseg.models.segnet import SegNet
from lesionseg.models.unet import UNet
from lesionseg.models.xnet import FeatureSimilarityModule, XNet


def conv_weight_shapes(module: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.weight.shape) for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_xnet_has_exactly_the_released_codes_count_parameters() -> None:
    with torch.device("meta"):
        assert count_parameters(XNet(in_channels=1, num_classes=1)) == 15_072_332


def test_xnet_batch_norms_use_keras_defaults() -> None:
    with torch.device("meta"):
        norms = [m for m in XNet(1, 1).modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)


def test_feature_similarity_module_relates_distant_positions() -> None:
    """Two 3x3 convs alone see 5x5: a change at one corner reaches the far corner only non-locally."""
    torch.manual_seed(0)
    fsm = FeatureSimilarityModule(channels=64).eval()
    image = torch.randn(1, 64, 8, 8)
    changed = image.clone()
    changed[..., 0, 0] += 5.0
    with torch.no_grad():
        before, after = fsm(image), fsm(changed)
    assert before.shape == image.shape
    assert not torch.allclose(before[..., 7, 7], after[..., 7, 7])


def test_unet_variants_reproduce_published_counts() -> None:
    with torch.device("meta"):
        classic = UNet(1, 1, upsampling="transposed")
        buda = UNet(3, 1, base_channels=32, upsampling="transposed")  # brain-segmentation-pytorch unet.py
    assert abs(count_parameters(classic) - 31_000_000) / 31_000_000 < 0.005
    assert count_parameters(buda) == 7_763_041


def test_unet_rejects_an_unknown_upsampling() -> None:
    with pytest.raises(ValueError, match="upsampling must be 'upsample_conv' or 'transposed', got 'bilinear'"):
        UNet(1, 1, upsampling="bilinear")  # type: ignore[arg-type]


def test_segnet_encoder_has_vgg16_bn_convolutions_and_decoder_mirrors_them() -> None:
    with torch.device("meta"):
        segnet = SegNet(3, 1)
        vgg = vgg16_bn(weights=None).features
    encoder_shapes = conv_weight_shapes(segnet.encoder)
    assert encoder_shapes == conv_weight_shapes(vgg)
    decoder_shapes = conv_weight_shapes(segnet.decoder)
    assert len(decoder_shapes) == 13
    # Mirror: decoder conv k maps encoder conv 12-k's output width back to its input width;
    # the last one maps to the classes instead of the image channels.
    mirrored = [(c_out, c_in) for c_out, c_in, *_ in reversed(encoder_shapes[1:])] + [(64, 1)]
    assert [(c_in, c_out) for c_out, c_in, *_ in decoder_shapes] == mirrored
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in segnet.modules())


def test_dense_unet_encoder_is_densenet161_with_the_codes_feature_taps() -> None:
    with torch.device("meta"):
        encoder_parameters = count_parameters(densenet161(weights=None).features)
        dense_unet = DenseUNet(3, 1)
    ours = sum(count_parameters(getattr(dense_unet, name)) for name in ("stem", "block1", "block2", "block3", "block4"))
    assert ours == encoder_parameters

    model = DenseUNet(1, 1).eval()
    taps = []
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        for name in ("stem", "block1", "block2", "block3", "block4"):
            x = getattr(model, name)(x)
            taps.append((x.shape[1], 64 // x.shape[-1]))
    assert taps == [(96, 2), (384, 4), (768, 8), (2112, 16), (2208, 32)]


def test_resunet_table1_convolutions_hold_the_papers_7_8m() -> None:
    """Zhang et al. state 7.8M parameters for the 15 convolutions of their Table 1 (RGB input)."""
    with torch.device("meta"):
        model = ResUNet(3, 1)
    shortcuts = sum(p.numel() for name, p in model.named_parameters() if ".shortcut." in name)
    without_shortcuts = count_parameters(model) - shortcuts
    assert without_shortcuts == 7_789_313
    assert abs(without_shortcuts - 7_800_000) / 7_800_000 < 0.002
    assert shortcuts == 434_496


def test_residual_unit_projects_only_when_the_shape_changes() -> None:
    assert isinstance(ResidualUnit(8, 8).shortcut, nn.Identity)
    assert not isinstance(ResidualUnit(8, 16).shortcut, nn.Identity)
    assert not isinstance(ResidualUnit(8, 8, stride=2).shortcut, nn.Identity)
    x = torch.randn(1, 8, 10, 10)
    assert ResidualUnit(8, 16, stride=2)(x).shape == (1, 16, 5, 5)


@pytest.mark.parametrize(("height", "width"), [(224, 192), (233, 197), (1, 31)])
def test_padding_to_a_stride_is_undone_by_cropping(height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width)
    padded = pad_to_multiple(x, 32)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert padded.shape[-2] - height < 32 and padded.shape[-1] - width < 32
    assert padded[..., height:, :].abs().sum() == 0 and padded[..., width:].abs().sum() == 0
    assert torch.equal(crop_to(padded, x.shape[-2:]), x)
