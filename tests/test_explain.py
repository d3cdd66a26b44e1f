"""`python -m lesionseg.explain`: saliency maps for every model, their scores, sanity check and bad input."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra_helpers import compose_train
from omegaconf import DictConfig, OmegaConf

from lesionseg.config import CONF_DIR, available_options
from lesionseg.explain import main
from lesionseg.explanations.methods import ExplainedModel, LimeSettings, MethodSettings, compute_maps, lime_map
from lesionseg.explanations.models import ExplainedOutput, load_predictor
from lesionseg.explanations.pipeline import explain
from lesionseg.explanations.targets import MASK, Target
from lesionseg.factory import build_net
from lesionseg.training import train

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
    with torch.no_grad():
        has_classifier = isinstance(net(image), dict) and "cls" in net(image)
    if has_classifier:  # models with a lesion classifier are also explained on their `cls` output
        on_cls = [ExplainedModel(ExplainedOutput(net, "cls"), net.get_submodule(layer_name), layer_name)]
        maps = compute_maps("gradcam", on_cls, image, [Target(weights, MASK, output="cls")] * 2, MethodSettings())
        assert maps.shape == (2, 64, 48) and np.isfinite(maps).all()


# ---------------------------------------------------------------- a briefly trained unet_small
TRAIN = (
    "model=unet_small",
    "model.base_channels=8",
    "data.num_training=10",
    "data.num_testing=1",
    "data.volume_shape=[64,64,12]",
    "data.slices=lesion",
    "data.batch_size=8",
    "data.num_workers=0",
    "augment=none",
    "optimizer.lr=0.003",
    "trainer.max_epochs=6",
    "test=false",
)


def trained(test: Callable) -> Callable:
    """Tests on the trained fixture: a real (short) train() run (slow), kept on one xdist worker."""
    return pytest.mark.slow(pytest.mark.xdist_group("explain_run")(test))


def explain_config(*overrides: str) -> DictConfig:
    """conf/explain.yaml composed with `overrides`, as the command line would."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("explain", overrides=list(overrides))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """unet_small (8 base channels) trained for 6 short epochs on lesion slices of tiny synthetic subjects."""
    cfg = compose_train(TRAIN, tmp_path_factory.mktemp("explain-run") / "run")
    _, summary = train(cfg)
    GlobalHydra.instance().clear()
    return Path(summary["best_checkpoint"])


@pytest.fixture(scope="session")
def held_out(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Grad-CAM, Grad-CAM++ and a random baseline on the held-out test subjects, with the sanity check."""
    folder = tmp_path_factory.mktemp("explain-split") / "out"
    summary = explain(explain_config(f"ckpt_path={checkpoint}", "split=test", "method=[gradcam,gradcampp,random]", "sanity=true", f"output_dir={folder}"))
    return summary, folder


@trained
def test_split_writes_maps_in_the_scan_geometry_overlays_and_scores(held_out: tuple[dict, Path]) -> None:
    summary, folder = held_out
    table = pd.read_csv(folder / "explanations.csv")
    assert summary["failed"] == 0 and summary["scans"] >= 2
    assert set(table["method"]) == {"gradcam", "gradcampp", "random"} and (table["status"] == "ok").all()
    assert (table.loc[table["method"] == "gradcam", "layer"] == "decoder.1").all()  # recorded default layer
    assert not table["fallback"].any()
    for row in table.itertuples():
        source = nib.load(row.source)  # the scan explained (the cache may hold other datasets with these subject ids)
        saliency = nib.load(row.saliency)
        assert saliency.shape == source.shape and np.allclose(saliency.affine, source.affine)
        voxels = np.asarray(saliency.dataobj)
        explained = [int(z) for z in str(row.slices).split(";")]
        assert voxels.min() >= 0 and voxels.max() <= 1 and voxels[:, :, explained].max() > 0
        assert Path(row.overlay).is_file() and cv2.imread(row.overlay) is not None
    assert json.loads((folder / "explain.json").read_text())["layers"] == ["decoder.1"]


@trained
def test_grad_cam_energy_lies_in_the_lesion_and_beats_a_random_map_on_road(held_out: tuple[dict, Path]) -> None:
    _, folder = held_out
    means = pd.read_csv(folder / "explanations.csv").groupby("method").mean(numeric_only=True)
    gradcam, random = means.loc["gradcam"], means.loc["random"]
    # measured (2 held-out subjects): Grad-CAM energy in the lesion 2.5x its area fraction (0.093 vs 0.055,
    # 0.235 vs 0.071); the random map 1.0x
    assert gradcam["energy_in_lesion"] > 1.5 * gradcam["lesion_area_fraction"]
    assert random["energy_in_lesion"] < 1.2 * random["lesion_area_fraction"]
    # measured: removing the most salient pixels first drops the lesion score 20x faster than for the random
    # map (ROAD MoRF -0.070 vs -0.003); ROAD combined 0.033 vs -0.0003
    assert gradcam["road_morf"] < random["road_morf"] - 0.03
    assert gradcam["road_combined"] > random["road_combined"] + 0.015


@trained
def test_randomising_the_weights_changes_the_maps(held_out: tuple[dict, Path]) -> None:
    _, folder = held_out
    sanity = pd.read_csv(folder / "sanity.csv")
    assert set(sanity["method"]) == {"gradcam", "gradcampp"} and set(sanity["step"]) == {1, 2, 3}
    final = pd.read_csv(folder / "explanations.csv").dropna(subset=["sanity_ssim"])
    assert len(final) == 2 * len(set(final["subject"]))
    assert (final["sanity_ssim"] < 0.5).all()  # measured 0.03-0.07 (Grad-CAM), 0.19 (Grad-CAM++): the maps depend on the weights


def lesion_picture(folder: Path) -> Path:
    """The synthetic training slice with the largest lesion, as an 8-bit PNG (a 2D scan)."""
    cache = Path(os.environ["LESIONSEG_CACHE"])
    label = next(cache.rglob("*T1lesion_mask.nii.gz"))
    image_path = next(label.parent.glob("*_T1w.nii.gz"))
    lesion = np.asarray(nib.load(str(label)).dataobj) > 0
    z = int(lesion.sum(axis=(0, 1)).argmax())
    plane = np.clip(np.asarray(nib.load(str(image_path)).dataobj)[:, :, z].T, 0, 255).astype(np.uint8)
    path = folder / "lesion.png"
    cv2.imwrite(str(path), plane)
    return path


@trained
def test_2d_pictures_get_png_and_npy_maps_and_an_empty_prediction_takes_the_flagged_fallback(checkpoint: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    lesion_picture(scans)
    cv2.imwrite(str(scans / "blank.png"), np.zeros((64, 64), np.uint8))  # nothing to predict: empty mask
    out = tmp_path / "out"
    summary = explain(
        explain_config(
            f"ckpt_path={checkpoint}",
            f"input={scans}",
            "method=[lime,occlusion]",
            "explain.lime.num_samples=40",
            "explain.lime.n_segments=20",
            "explain.occlusion.window=16",
            "explain.occlusion.stride=16",
            f"output_dir={out}",
        )
    )
    table = pd.read_csv(out / "explanations.csv").set_index(["subject", "method"])
    assert summary["fallback_subjects"] == ["blank"]
    assert table.loc[("blank", "lime"), "target"] == "probability" and bool(table.loc[("blank", "occlusion"), "fallback"])
    assert table.loc[("lesion", "lime"), "target"] == "mask" and not table.loc[("lesion", "lime"), "fallback"]
    for subject in ("lesion", "blank"):
        for method in ("lime", "occlusion"):
            values = np.load(out / f"{subject}_{method}_saliency.npy")
            picture = cv2.imread(str(out / f"{subject}_{method}_saliency.png"), cv2.IMREAD_UNCHANGED)
            assert values.shape == picture.shape == (64, 64) and values.dtype == np.float32
            assert np.abs(picture.astype(np.float32) / 255 - values).max() <= 0.5 / 255 + 1e-6
        assert cv2.imread(str(out / f"{subject}_overlay.png")) is not None


@trained
def test_lime_with_a_fixed_seed_is_reproducible(checkpoint: Path, tmp_path: Path) -> None:
    predictor, members = load_predictor([checkpoint], "cpu", 16)
    picture = cv2.imread(str(lesion_picture(tmp_path)), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    image = torch.from_numpy(predictor.model_input(picture[None, None]))
    weights = np.zeros((64, 64), np.float32)
    weights[20:40, 20:40] = 1
    model = ExplainedOutput(members[0].module, "seg")
    settings = MethodSettings(seed=3, lime=LimeSettings(num_samples=40, n_segments=20))
    first, second = (lime_map(model, image[0], Target(weights, MASK), settings) for _ in range(2))
    assert first.max() > 0 and np.array_equal(first, second)
    other = lime_map(model, image[0], Target(weights, MASK), MethodSettings(seed=4, lime=settings.lime))
    assert not np.array_equal(first, other)


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *arguments: str) -> tuple[int, list[str]]:
    """`python -m lesionseg.explain <arguments>` in this process: (exit code, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["lesionseg.explain", *arguments])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0), capsys.readouterr().err.strip().splitlines()


@trained
def test_bad_input_is_one_line_and_exit_code_2(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti volume")
    code, lines = run_cli(monkeypatch, capsys, f"ckpt_path={checkpoint}", f"input={broken}", f"output_dir={tmp_path / 'a'}")
    assert code == 2 and lines[0].startswith(f"error: {broken}: ") and "NIfTI" in lines[0]
    assert not any("Traceback" in line for line in lines)
    code, lines = run_cli(monkeypatch, capsys, f"ckpt_path={checkpoint}", f"input={broken}", "method=gradcam,shap")
    assert code == 2 and lines == ["error: method=shap: unknown method; use one or more of gradcam, gradcampp, lime, occlusion, random"]
    code, lines = run_cli(monkeypatch, capsys, f"ckpt_path={checkpoint}", f"input={broken}", "explain.layer=encoder.9")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: explain.layer=encoder.9: no such module in unet_small")
    code, lines = run_cli(monkeypatch, capsys, f"ckpt_path={checkpoint}", f"input={broken}", "explain.layr=encoder.4")
    assert code == 2 and lines == ["error: unknown key 'explain.layr' in 'explain.layr=encoder.4'; see conf/explain.yaml"]


@trained
def test_an_ensemble_averages_its_members_maps(checkpoint: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    lesion_picture(scans)
    single, pair = tmp_path / "single", tmp_path / "pair"
    explain(explain_config(f"ckpt_path={checkpoint}", f"input={scans}", "method=[gradcam,occlusion]", f"output_dir={single}"))
    summary = explain(explain_config(f"ckpt_path=[{checkpoint},{checkpoint}]", f"input={scans}", "method=[gradcam,occlusion]", f"output_dir={pair}"))
    assert summary["layers"] == ["decoder.1", "decoder.1"]
    for method in ("gradcam", "occlusion"):  # the mean of two identical members' maps is each member's map
        assert np.allclose(np.load(pair / f"lesion_{method}_saliency.npy"), np.load(single / f"lesion_{method}_saliency.npy"), atol=1e-6)
