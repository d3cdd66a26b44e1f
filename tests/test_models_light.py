"""Specifics of the lightweight and generic models (UNeXt, LR-ASPP, segmenter + classifier, smp,
DynUNet), the model table and the model benchmark. The contract every catalog model keeps
(counts, output size, gradients, training, channels_last, bf16) is tested in test_models.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision
from hydra_helpers import compose_train
from rich.console import Console
from torch import nn

from lesionseg.bench.__main__ import main as bench_main
from lesionseg.factory import build_net
from lesionseg.models.__main__ import model_table
from lesionseg.models.catalog import CATALOG
from lesionseg.models.generic import NNUNet2D, SMPModel, nnunet_2d_plan
from lesionseg.models.lraspp import LRASPPMobileNetV3
from lesionseg.models.measure import count_parameters
from lesionseg.models.unext import shift_channel_groups

ODD_SIZE = (61, 45)


def build(config: str, *overrides: str, in_channels: int = 1, num_classes: int = 1) -> nn.Module:
    """Instantiate `conf/model/<config>.yaml` from the composed run config, seeded."""
    cfg = compose_train([f"model={config}", f"data.in_channels={in_channels}", f"data.num_classes={num_classes}", *overrides])
    torch.manual_seed(0)
    return build_net(cfg.model)  # without metadata keys such as explain_layer


# --- UNeXt -------------------------------------------------------------------------------------


def test_unext_shift_moves_each_channel_group_with_zero_fill() -> None:
    height, width = 6, 7
    tokens = torch.arange(1.0, height * width + 1).reshape(1, height, width, 1).repeat(1, 1, 1, 5)
    down = shift_channel_groups(tokens, axis=1)
    right = shift_channel_groups(tokens, axis=2)
    for group, offset in enumerate(range(-2, 3)):
        expected_down = torch.zeros(height, width)
        expected_right = torch.zeros(height, width)
        plane = tokens[0, ..., group]
        if offset >= 0:
            expected_down[offset:] = plane[: height - offset]
            expected_right[:, offset:] = plane[:, : width - offset]
        else:
            expected_down[:offset] = plane[-offset:]
            expected_right[:, :offset] = plane[:, -offset:]
        assert torch.equal(down[0, ..., group], expected_down), f"group {group} along H"
        assert torch.equal(right[0, ..., group], expected_right), f"group {group} along W"


def test_unext_s_config_is_the_small_released_network() -> None:
    model = build("unext_s", in_channels=3)
    assert count_parameters(model) == 253_561
    assert [stage[0].out_channels for stage in model.encoder] == [8, 16, 32, 64]
    assert model.bottleneck[0].out_channels == 128


# --- LR-ASPP -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "count"), [("lraspp_mnv3", 310_106), ("lraspp_mnv3_skip", 312_698)])
def test_lraspp_chosen_configurations(config: str, count: int) -> None:
    model = build(config, in_channels=3)
    assert count_parameters(model) == count
    assert model.head.cbr[0].out_channels == 72
    assert model.features[-1].out_channels == 240  # MobileNetV3-Small x0.75, reduced tail


def test_lraspp_large_configuration_equals_torchvision_lraspp() -> None:
    ours = LRASPPMobileNetV3(3, 1, variant="large", width_mult=1.0, reduced_tail=False, inter_channels=128)
    segmentation = torchvision.models.segmentation
    reference = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=1)
    assert count_parameters(ours) == count_parameters(reference) == 3_218_138


def test_lraspp_extra_skips_read_the_stride_4_and_stride_2_stages() -> None:
    model = build("lraspp_mnv3_skip", in_channels=3).eval()
    seen: list[tuple[int, int]] = []
    for projection in model.skip_projections:
        projection.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96))
    assert seen == [(16, 24), (32, 48)]
    assert logits.shape == (1, 1, 64, 96)


@pytest.mark.parametrize("skip_strides", [(8,), (2, 4), (4, 4)])
def test_lraspp_rejects_unusable_skip_strides(skip_strides: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="skip_strides"):
        LRASPPMobileNetV3(3, 1, skip_strides=skip_strides)


# --- segmenter + classifier --------------------------------------------------------------------


def test_segclassifier_returns_seg_logits_and_one_lesion_logit_per_image() -> None:
    model = build("segclassifier")
    images = torch.randn(2, 1, *ODD_SIZE)
    output = model(images)
    assert set(output) == {"seg", "cls"}
    assert output["seg"].shape == (2, 1, *ODD_SIZE)
    assert output["cls"].shape == (2, 1)
    assert not torch.equal(output["cls"][0], output["cls"][1])


def test_segclassifier_classifier_reads_the_encoder_only() -> None:
    model = build("segclassifier")
    model(torch.randn(2, 1, 32, 32))["cls"].sum().backward()
    net = model.net
    assert all(p.grad is not None for p in net.encoder.parameters())
    assert all(p.grad is None for p in [*net.decoder.parameters(), *net.segmentation_head.parameters()])


def test_segclassifier_deep_stages_are_dilated_at_stride_8() -> None:
    encoder = build("segclassifier").net.encoder
    assert encoder(torch.randn(1, 1, 32, 48))[-1].shape[-2:] == (4, 6)
    assert encoder.layer3[0].conv1.dilation == (2, 2)
    assert encoder.layer4[0].conv1.dilation == (4, 4)


# --- smp wrapper and DeepLabV3+ ----------------------------------------------------------------


def test_smp_architecture_and_encoder_are_chosen_by_override() -> None:
    model = build("smp", "model.arch=UnetPlusPlus", "model.encoder_name=resnet18")
    assert isinstance(model.net, smp.UnetPlusPlus)
    reference = smp.UnetPlusPlus(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=1)
    assert count_parameters(model) == count_parameters(reference)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, *ODD_SIZE)).shape == (1, 1, *ODD_SIZE)  # padded to 32 inside


def test_smp_refuses_downloaded_encoder_weights() -> None:
    with pytest.raises(ValueError, match="never downloads.*weights_path"):
        SMPModel(1, 1, encoder_weights="imagenet")


def test_deeplabv3plus_has_aspp_rates_6_12_18_at_output_stride_16() -> None:
    model = build("deeplabv3plus")
    aspp = model.net.decoder.aspp[0]
    dilations = [branch[0][0].dilation[0] for branch in list(aspp.convs)[1:4]]
    assert dilations == [6, 12, 18]
    assert model.net.encoder.output_stride == 16


@pytest.mark.parametrize("part", ["model", "encoder"])
def test_smp_loads_a_local_weights_file(tmp_path: Path, part: str) -> None:
    source = build("smp", "model.encoder_name=resnet18")
    with torch.no_grad():  # make the saved weights unlike any fresh initialisation
        for parameter in source.parameters():
            parameter.add_(1.0)
    weights = tmp_path / f"{part}.pt"
    torch.save(source.net.state_dict() if part == "model" else source.net.encoder.state_dict(), weights)
    loaded = build("smp", "model.encoder_name=resnet18", f"model.weights_path={weights}")
    encoder_pairs = zip(source.net.encoder.parameters(), loaded.net.encoder.parameters())
    decoder_pairs = zip(source.net.decoder.parameters(), loaded.net.decoder.parameters())
    assert all(torch.equal(a, b) for a, b in encoder_pairs)
    assert all(torch.equal(a, b) for a, b in decoder_pairs) == (part == "model")


def test_smp_missing_weights_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: weights file not found")):
        SMPModel(1, 1, encoder_name="resnet18", weights_path=str(missing))


def test_smp_mismatched_weights_file_is_named(tmp_path: Path) -> None:
    weights = tmp_path / "three_channel_encoder.pt"
    torch.save(SMPModel(3, 1, encoder_name="resnet18").net.encoder.state_dict(), weights)
    with pytest.raises(ValueError, match=re.escape(f"{weights}: does not fit the encoder") + ".*conv1.weight"):
        SMPModel(1, 1, encoder_name="resnet18", weights_path=str(weights))


def test_smp_not_a_state_dict_file_is_named(tmp_path: Path) -> None:
    weights = tmp_path / "notes.pt"
    weights.write_text("not weights")
    with pytest.raises(ValueError, match=re.escape(f"{weights}: not a readable PyTorch state dict")):
        SMPModel(1, 1, encoder_name="resnet18", weights_path=str(weights))


# --- DynUNet as nnU-Net 2D ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "strides"),
    [
        ((224, 192), [[1, 1]] + [[2, 2]] * 5),
        ((256, 256), [[1, 1]] + [[2, 2]] * 6),
        ((128, 32), [[1, 1]] + [[2, 2]] * 3 + [[2, 1]] * 2),
    ],
)
def test_nnunet_plan_pools_each_axis_down_to_feature_maps_of_4(patch: tuple[int, int], strides: list) -> None:
    kernels, planned = nnunet_2d_plan(patch)
    assert planned == strides
    assert kernels == [[3, 3]] * len(strides)


def test_nnunet_plan_rejects_a_patch_too_small_to_pool() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        nnunet_2d_plan((6, 64))


def test_dynunet_config_follows_the_patch_size() -> None:
    model = build("dynunet", "model.patch_size=[64,64]")
    assert [list(s) for s in model.net.strides] == [[1, 1]] + [[2, 2]] * 4
    assert model.net.filters == [32, 64, 128, 256, 512]
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, *ODD_SIZE)).shape == (1, 1, *ODD_SIZE)


def test_dynunet_deep_supervision_adds_upsampled_auxiliary_logits_in_training_only() -> None:
    model = NNUNet2D(1, 2, patch_size=(64, 64), deep_supervision=True)
    size = (29, 21)
    images = torch.randn(2, 1, *size)
    output = model.train()(images)
    assert output["seg"].shape == (2, 2, *size)
    assert output["deep_supervision"].shape == (2, 2, 2, *size)  # 5 stages: 2 auxiliary heads
    (output["seg"].sum() + output["deep_supervision"].sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(images).shape == (2, 2, *size)


# --- the model table and the benchmark ---------------------------------------------------------


@pytest.mark.slow  # full-size models: the slow lane
def test_model_table_lists_every_catalog_config() -> None:
    console = Console(record=True, width=250)
    console.print(model_table())
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.startswith("│")}
    assert list(rows) == [entry.config for entry in CATALOG]
    assert "1,471,921" in rows["unext"] and "+0.00% ok" in rows["unext"]
    assert re.search(r"310,106 .* 310,000 .* \+0\.03% ok", rows["lraspp_mnv3"])
    assert "0.562" in rows["unext"]  # MACs at 256x256 (the paper: 0.57 GFLOPs)


def test_bench_models_prints_throughput_and_how_to_rerun(capsys: pytest.CaptureFixture[str]) -> None:
    bench_main(["models", "--models", "unext_s", "--batch-size", "2", "--size", "32x32", "--steps", "1", "--warmup", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert re.search(r"unext_s\s+│\s+253,561\s+│\s+\d+\.\d", out)
    assert "python -m lesionseg.bench models" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["models", "--models", "unext,nope"], "unknown model.*nope"), (["modles"], "usage: .*models\\|data")],
)
def test_bench_rejects_unknown_names(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        bench_main(argv)
