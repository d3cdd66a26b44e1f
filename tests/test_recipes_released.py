"""Recipes as the released code trains them: parameter groups, Keras initialisation, Buda's U-Net."""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from hydra_helpers import compose_train
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassSpecificity,
)

from lesionseg.bench import overhead
from lesionseg.factory import build_net
from lesionseg.losses import Dice
from lesionseg.models.measure import count_parameters
from lesionseg.models.unet import UNet, buda_state_dict
from lesionseg.models.xnet import TRUNCATED_NORMAL_STD, XNet, keras_fans
from lesionseg.module import SegmentationModule
from lesionseg.optim import build_optimizer, parameter_kind
from lesionseg.slice_metrics import SCORES, SliceMetrics


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


# ---------------------------------------------------------------- X-Net as the released Keras code builds it
def recipe(overrides: list[str], output_dir: Path) -> DictConfig:
    """The resolved run config (Hydra node dropped), so a model node builds on its own."""
    resolved = OmegaConf.to_container(compose_train([*overrides, "data.root=/data"], output_dir), resolve=True)
    assert isinstance(resolved, dict)
    resolved.pop("hydra")
    return OmegaConf.create(resolved)


def test_xnet_conv_kernels_have_keras_he_normal_statistics_and_the_head_glorot_uniform() -> None:
    torch.manual_seed(0)
    model = XNet(1, 1, base_channels=16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not model.head]
    assert len(convs) == 73  # the released model's 73 regularised kernels; the head (74th) is not
    depthwise = [m for m in convs if m.groups > 1]
    assert depthwise and keras_fans(depthwise[-1])[0] == 9 * depthwise[-1].in_channels  # Keras counts every channel
    checked = 0
    for conv in convs:
        expected = math.sqrt(2.0 / keras_fans(conv)[0])
        assert conv.weight.abs().max() <= 2 * expected / TRUNCATED_NORMAL_STD + 1e-6  # truncated at 2 std
        if conv.weight.numel() >= 4000:
            assert conv.weight.std().item() == pytest.approx(expected, rel=0.06)
            checked += 1
        assert conv.bias is None or not conv.bias.any()
    assert checked >= 20
    limit = math.sqrt(6.0 / (16 + 1))
    assert model.head.weight.abs().max() <= limit and model.head.weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.3)
    assert not model.head.bias.any()
    torch_default = XNet(1, 1, base_channels=16, init="pytorch")
    conv = next(m for m in torch_default.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4000 and m.groups == 1)
    assert conv.weight.std().item() < 0.7 * math.sqrt(2.0 / keras_fans(conv)[0])  # torch's kaiming_uniform(a=sqrt 5)


def test_xnet_recipe_decays_only_the_conv_kernels_with_the_keras_l2_strength(tmp_path: Path) -> None:
    """One Adam step of the recipe's optimizer on a zero loss equals one on Keras' penalty 1e-5 * sum(w^2)."""
    cfg = recipe(["experiment=xnet_atlas", "model.base_channels=4"], tmp_path)
    torch.manual_seed(0)
    module = nn.ModuleDict({"net": build_net(cfg.model)})  # named as in the LightningModule: net.*
    optimizer = build_optimizer(hydra.utils.instantiate(cfg.optimizer), module)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    kernels = [m.weight for name, m in module.named_modules() if isinstance(m, nn.Conv2d) and name != "net.head"]
    assert len(kernels) == 73
    assert all(decay[id(p)] == 2e-5 for p in kernels)
    assert sum(rate > 0 for rate in decay.values()) == 73  # biases, BatchNorm and the head undecayed

    keras = nn.ModuleDict({"net": build_net(cfg.model)})
    keras.load_state_dict(module.state_dict())
    keras_optimizer = torch.optim.Adam(keras.parameters(), lr=1e-3, eps=1e-7)
    keras_kernels = [m.weight for name, m in keras.named_modules() if isinstance(m, nn.Conv2d) and name != "net.head"]
    for opt, loss in (
        (optimizer, sum(0.0 * p.sum() for p in module.parameters())),
        (keras_optimizer, 1e-5 * sum((w**2).sum() for w in keras_kernels) + sum(0.0 * p.sum() for p in keras.parameters())),
    ):
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, ours), theirs in zip(module.named_parameters(), keras.parameters()):
        torch.testing.assert_close(ours, theirs, msg=name)


# ---------------------------------------------------------------- Buda et al.'s U-Net (brain-segmentation-pytorch)
def buda_block(in_channels: int, features: int, name: str) -> nn.Sequential:
    """`UNet._block` of brain-segmentation-pytorch's unet.py, with its layer names."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for index, c_in in ((1, in_channels), (2, features)):
        layers[f"{name}conv{index}"] = nn.Conv2d(c_in, features, 3, padding=1, bias=False)
        layers[f"{name}norm{index}"] = nn.BatchNorm2d(features)
        layers[f"{name}relu{index}"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class BudaUNet(nn.Module):
    """The released U-Net's modules and forward (its final sigmoid left out: logits, as our contract)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, features: int = 32) -> None:
        super().__init__()
        widths = [features * 2**level for level in range(5)]
        for level in range(1, 5):
            self.add_module(f"encoder{level}", buda_block(in_channels if level == 1 else widths[level - 2], widths[level - 1], f"enc{level}"))
        self.bottleneck = buda_block(widths[3], widths[4], "bottleneck")
        for level in range(4, 0, -1):
            self.add_module(f"upconv{level}", nn.ConvTranspose2d(widths[level], widths[level - 1], kernel_size=2, stride=2))
            self.add_module(f"decoder{level}", buda_block(widths[level - 1] * 2, widths[level - 1], f"dec{level}"))
        self.conv = nn.Conv2d(features, out_channels, kernel_size=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in range(1, 5):
            x = getattr(self, f"encoder{level}")(x if level == 1 else self.pool(x))
            skips.append(x)
        x = self.bottleneck(self.pool(x))
        for level in range(4, 0, -1):
            x = getattr(self, f"decoder{level}")(torch.cat((getattr(self, f"upconv{level}")(x), skips.pop()), dim=1))
        return self.conv(x)


def test_buda_weights_transplanted_into_unet_lgg_give_the_released_models_outputs() -> None:
    torch.manual_seed(0)
    buda = BudaUNet(features=4)
    for norm in buda.modules():  # non-trivial running statistics, so a misplaced BatchNorm shows
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    buda.eval()
    ours = UNet(3, 1, base_channels=4, upsampling="transposed", concat_order="upsampled_first").eval()
    ours.load_state_dict(buda_state_dict(buda.state_dict()))  # strict: every key maps, none is left over
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(image), buda(image))
        skip_first = UNet(3, 1, base_channels=4, upsampling="transposed").eval()
        skip_first.load_state_dict(buda_state_dict(buda.state_dict()))  # the same shapes load silently ...
        assert not torch.allclose(skip_first(image), buda(image), atol=1e-3)  # ... into wrong outputs


def test_unet_lgg_uses_budas_concat_order_and_his_parameter_count(tmp_path: Path) -> None:
    cfg = recipe(["experiment=unet_lgg"], tmp_path)
    with torch.device("meta"):
        net = build_net(cfg.model)
        released = BudaUNet()
    assert net.concat_order == "upsampled_first"
    assert count_parameters(net) == count_parameters(released) == 7_763_041
    assert set(buda_state_dict(released.state_dict())) == set(net.state_dict())


def test_buda_state_dict_names_a_key_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="not a key of Buda's U-Net: 'encoder1.extra.weight'"):
        buda_state_dict({"encoder1.extra.weight": torch.zeros(1)})


# ---------------------------------------------------------------- the training step's slice metrics
def torchmetrics_reference(num_classes: int) -> MetricCollection:
    """The six torchmetrics objects the module used to update on every step."""
    if num_classes == 1:
        classes = (BinaryF1Score, BinaryJaccardIndex, BinaryPrecision, BinaryRecall, BinarySpecificity, BinaryAccuracy)
        return MetricCollection(dict(zip(SCORES, (metric() for metric in classes))))
    classes = (MulticlassF1Score, MulticlassJaccardIndex, MulticlassPrecision, MulticlassRecall, MulticlassSpecificity, MulticlassAccuracy)
    return MetricCollection(dict(zip(SCORES, (metric(num_classes=num_classes, average="macro") for metric in classes))))


@pytest.mark.parametrize("num_classes", [1, 4])
def test_slice_metrics_from_one_count_equal_torchmetrics_six_metrics(num_classes: int) -> None:
    torch.manual_seed(0)
    ours, reference = SliceMetrics(num_classes), torchmetrics_reference(num_classes)
    high = max(num_classes, 2)
    batches = [(torch.randint(0, high, (3, 16, 16)), torch.randint(0, high, (3, 16, 16))) for _ in range(3)]
    batches.append((torch.zeros(2, 16, 16, dtype=torch.long), torch.zeros(2, 16, 16, dtype=torch.long)))  # nothing to find
    if num_classes > 1:
        batches.append((torch.randint(0, 2, (2, 16, 16)), torch.randint(0, 2, (2, 16, 16))))  # classes 2, 3 absent
    for prediction, target in batches:
        step, expected_step = ours(prediction, target), reference(prediction, target)
        for name in SCORES:
            torch.testing.assert_close(step[name], expected_step[name].float(), msg=name)
    epoch, expected = ours.compute(), reference.compute()
    for name in SCORES:
        torch.testing.assert_close(epoch[name], expected[name].float(), msg=name)


def test_training_logs_step_and_epoch_metrics_and_validation_per_epoch(tmp_path: Path) -> None:
    """The names the loggers and summary.json read: train/<m>_step, train/<m>_epoch, val/<m>."""
    module = SegmentationModule(net=nn.Conv2d(1, 1, 3, padding=1), loss=Dice(num_classes=1), optimizer=partial(torch.optim.SGD, lr=0.1))
    batch = {"image": torch.randn(2, 1, 8, 8), "mask": (torch.rand(2, 8, 8) > 0.5).long()}
    loader = DataLoader([batch] * 3, batch_size=None)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    logged = set(trainer.logged_metrics)
    assert {f"train/{name}_step" for name in SCORES} | {f"train/{name}_epoch" for name in SCORES} | {f"val/{name}" for name in SCORES} <= logged
    with torch.no_grad():  # the last validation ran with the final weights, on three copies of `batch`
        prediction = module.predict_mask(module.eval()(batch["image"]))
    assert float(trainer.callback_metrics["val/dice"]) == pytest.approx(float(BinaryF1Score()(prediction, batch["mask"])))


# ---------------------------------------------------------------- the framework's overhead
def test_overhead_bench_interleaves_the_bare_and_the_framework_steps_on_tiny_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overhead.main(
        [
            "--steps=2",
            "--warmup=1",
            "model.base_channels=4",
            "data.batch_size=2",
            "data.num_training=3",
            "data.num_folds=2",
            "data.test_fraction=0.0",
            "data.num_testing=0",
            "data.volume_shape=[24,24,6]",
            f"data.root={tmp_path / 'data'}",
        ]
    )
    out = capsys.readouterr().out
    assert "2 interleaved steps of batch 2" in out  # the warm-up step dropped
    assert "SegmentationModule + Trainer" in out and "bare PyTorch" in out
