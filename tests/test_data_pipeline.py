"""The shared data pipeline: preprocessing, splits, slice selection, slice store, augmentation, loaders."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from data_fixtures import TINY_SHAPE, atlas_module, pristine_r2, r2_root, store_files  # noqa: F401  (fixtures)
from hydra.utils import instantiate

from lesionseg.data.atlas import AtlasLayout
from lesionseg.data.augment import augment_slice
from lesionseg.data.preprocess import Preprocess
from lesionseg.data.splits import split_subjects
from lesionseg.data.store import SliceStore

# ---- preprocessing -----------------------------------------------------------------------------


def test_xnet_crop_turns_233x197_slices_into_224x192() -> None:
    image = np.random.default_rng(0).uniform(1, 200, size=(3, 1, 233, 197)).astype(np.float32)
    mask = (image[:, 0] > 150).astype(np.uint8)
    crop = Preprocess(crop=((5, 229), (2, 194)), normalisation="none")
    cropped, cropped_mask = crop(image, mask)
    assert cropped.shape == (3, 1, 224, 192) and cropped_mask.shape == (3, 224, 192)
    np.testing.assert_array_equal(cropped[:, 0], image[:, 0, 5:229, 2:194])
    np.testing.assert_array_equal(cropped_mask, mask[:, 5:229, 2:194])


@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_target_size_pads_or_resizes_image_and_mask_together(mode: str) -> None:
    image = np.zeros((2, 1, 30, 20), dtype=np.float32)
    image[:, :, 10:20, 5:15] = 1.0
    mask = (image[:, 0] > 0).astype(np.uint8)
    resized, resized_mask = Preprocess(target_size=(40, 40), resize_mode=mode, normalisation="none")(image, mask)
    assert resized.shape == (2, 1, 40, 40) and resized_mask.shape == (2, 40, 40)
    inside, labelled = resized[:, 0] > 0.5, resized_mask.astype(bool)
    assert (inside & labelled).sum() / (inside | labelled).sum() > 0.95
    if mode == "pad":
        np.testing.assert_array_equal(inside, labelled)
        assert resized_mask.sum() == mask.sum()


def test_normalisation_options() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((4, 1, 16, 16), dtype=np.float32)
    image[:, :, 4:12, 4:12] = rng.uniform(50, 150, size=(4, 1, 8, 8))
    brain = image > 0
    constant, _ = Preprocess(normalisation="constant", scale=100.0)(image, None)
    np.testing.assert_allclose(constant, image / 100)
    peak, _ = Preprocess(normalisation="max")(image, None)
    assert peak.max() == pytest.approx(1.0)
    zscore, _ = Preprocess(normalisation="zscore")(image, None)
    assert zscore[brain].mean() == pytest.approx(0.0, abs=1e-5) and zscore[brain].std() == pytest.approx(1.0, abs=1e-4)
    assert (zscore[~brain] == 0).all()
    image[0, 0, 5, 5] = 10_000.0  # an outlier clipped back to the 99th percentile
    clipped, _ = Preprocess(normalisation="none", clip_percentiles=(1.0, 99.0))(image, None)
    assert clipped.max() < 151 and (clipped[~brain] == 0).all()


def test_preprocess_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="preprocess.normalisation='l2'"):
        Preprocess(normalisation="l2")
    with pytest.raises(ValueError, match=r"unknown keys \['crops'\]"):
        Preprocess.from_config({"crops": None})
    assert Preprocess.from_config({"crop": [[5, 229], [2, 194]]}).crop == ((5, 229), (2, 194))


# ---- splits ------------------------------------------------------------------------------------

SUBJECTS = [f"sub-{i:03d}" for i in range(23)]


def test_splits_are_disjoint_cover_every_subject_and_are_deterministic() -> None:
    split = split_subjects(SUBJECTS, num_folds=5, fold=2, test_fraction=0.2, seed=7)
    train, val, test = (set(split[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(SUBJECTS) and len(test) == 5
    assert split == split_subjects(list(reversed(SUBJECTS)), num_folds=5, fold=2, test_fraction=0.2, seed=7)
    assert split != split_subjects(SUBJECTS, num_folds=5, fold=2, test_fraction=0.2, seed=8)


@pytest.mark.parametrize("shuffle", [True, False])
def test_folds_partition_the_non_test_subjects(shuffle: bool) -> None:
    splits = [split_subjects(SUBJECTS, 5, fold, 0.2, 7, shuffle) for fold in range(5)]
    assert all(split["test"] == splits[0]["test"] for split in splits)
    vals = [subject for split in splits for subject in split["val"]]
    assert sorted(vals) == sorted(set(SUBJECTS) - set(splits[0]["test"]))  # each once
    if not shuffle:  # X-Net's unshuffled KFold: contiguous blocks of the sorted subjects
        pool = sorted(set(SUBJECTS) - set(splits[0]["test"]))
        assert splits[0]["val"] == pool[: len(splits[0]["val"])]


def test_split_errors() -> None:
    with pytest.raises(ValueError, match="data.fold=5"):
        split_subjects(SUBJECTS, num_folds=5, fold=5)
    with pytest.raises(ValueError, match="need at least 5"):
        split_subjects(SUBJECTS[:4], num_folds=5, test_fraction=0.0)


# ---- datamodule: batches, loaders, slice selection ---------------------------------------------


def test_batches_follow_the_contract_and_val_test_cover_every_slice_in_order(r2_root: Path, tmp_path: Path) -> None:
    module = atlas_module(r2_root, tmp_path / "cache")
    module.prepare_data()
    module.setup("fit")
    module.setup("fit")  # idempotent
    assert module.in_channels == 1 and module.num_classes == 1
    batch = next(iter(module.train_dataloader()))
    x, y, z = TINY_SHAPE
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 1, y, x)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (4, y, x)
    assert set(torch.unique(batch["mask"]).tolist()) <= {0, 1}
    assert batch["slice_index"].dtype == torch.int64 and isinstance(batch["subject"], list)
    for split, loader in (("val", module.val_dataloader()), ("test", module.test_dataloader())):
        seen = [(s, int(i)) for b in loader for s, i in zip(b["subject"], b["slice_index"])]
        assert seen == [(s, i) for s in module.split[split] for i in range(z)]
    # what a loader returns is what the layout decoded, preprocessed
    subject = module.split["val"][0]
    case = next(c for c in module.labelled_cases() if c.subject == subject)
    decoded = AtlasLayout().load(case)
    first = next(iter(module.val_dataloader()))
    np.testing.assert_allclose(first["image"][0, 0].numpy(), decoded.image[0, 0] / 100, rtol=1e-3)


@pytest.mark.parametrize("slices, ratio", [("all", None), ("lesion", None), ("ratio", 1.0)])
def test_training_slice_selection(r2_root: Path, tmp_path: Path, slices: str, ratio: float | None) -> None:
    module = atlas_module(r2_root, tmp_path / "cache", slices=slices, lesion_ratio=ratio)
    module.setup("fit")
    cases = module.subjects("train")
    items = module.train_slices(cases)
    lesion = {(p, z) for p, case in enumerate(cases) for z in case.lesion_slices}
    with_lesion = [item for item in items if item in lesion]
    assert len(with_lesion) == len(lesion)  # every selection keeps every lesion slice
    empty = len(items) - len(with_lesion)
    if slices == "all":
        assert len(items) == len(cases) * TINY_SHAPE[2]
    elif slices == "lesion":
        assert empty == 0
    else:
        available = len(cases) * TINY_SHAPE[2] - len(lesion)
        assert 0 < empty <= len(lesion) + len(cases) and empty <= available
    assert len(module.val_dataloader().dataset) == len(module.split["val"]) * TINY_SHAPE[2]


def test_ratio_needs_lesion_ratio() -> None:
    with pytest.raises(ValueError, match="data.lesion_ratio=None"):
        atlas_module(Path("."), Path("."), slices="ratio")


# ---- slice store -------------------------------------------------------------------------------


def test_store_is_reused_then_rebuilt_only_for_what_changed(r2_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    atlas_module(r2_root, cache).prepare_data()
    first = store_files(cache)
    atlas_module(r2_root, cache).prepare_data()
    assert store_files(cache) == first  # reused: no entry rewritten

    case = AtlasLayout().find(r2_root)[1]
    stat = case.image[0].stat()
    os.utime(case.image[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touch one source file
    atlas_module(r2_root, cache).prepare_data()
    changed = {path for path, mtime in store_files(cache).items() if first.get(path) != mtime}
    assert changed and all(path.name.startswith(case.subject + ".") for path in changed)

    atlas_module(r2_root, cache, preprocess={"normalisation": "max"}).prepare_data()
    folders = {path.parent for path in store_files(cache)}
    assert len(folders) == 2  # a new preprocessing -> a second store; the first left as it was


def _build_store(root: str, cache: str, start) -> None:
    start.wait()  # both builders begin together, so they write the same entries at the same time
    atlas_module(Path(root), Path(cache)).prepare_data()


def test_two_concurrent_builds_give_a_valid_store(r2_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    start = context.Barrier(2)
    workers = [context.Process(target=_build_store, args=(str(r2_root), str(cache), start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert not [path for path in store_files(cache) if path.name.endswith(".tmp")]
    before = store_files(cache)
    module = atlas_module(r2_root, cache)
    module.setup("fit")
    assert store_files(cache) == before  # what the two builders left is complete and current
    for stored in module.stored.values():
        case = next(c for c in module.labelled_cases() if c.subject == stored.subject)
        np.testing.assert_array_equal(stored.mask, AtlasLayout().load(case).mask)


def test_stored_case_pickles_without_its_arrays(r2_root: Path, tmp_path: Path) -> None:
    import pickle

    layout = AtlasLayout()
    store = SliceStore(tmp_path / "cache", "atlas", r2_root, layout, Preprocess())
    stored = store.entry(layout.find(r2_root)[0])
    assert stored.image.shape[0] == TINY_SHAPE[2]
    assert len(pickle.dumps(stored)) < 1000


# ---- augmentation ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["default", "strong", "square", "buda_lgg", "unext_lgg", "stroke_fewshot"])
def test_augmentation_keeps_image_and_mask_aligned(config: str) -> None:
    from omegaconf import OmegaConf

    augment = instantiate(OmegaConf.load(Path("conf/augment") / f"{config}.yaml"))
    assert isinstance(augment, A.Compose)
    size = (48, 48) if config in ("square", "unext_lgg") else (56, 40)
    mask = np.zeros(size, dtype=np.uint8)
    mask[8:30, 6:20] = 1
    mask[35:45, 25:33] = 1
    image = np.stack([mask * 1.0, 1.0 - mask]).astype(np.float32)  # 2 channels shaped like the mask
    changed = 0
    for _ in range(20):
        out_image, out_mask = augment_slice(augment, image, mask)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape
        predicted = out_image[0] > 0.5
        agreement = (predicted == out_mask.astype(bool)).mean()
        assert agreement > 0.97, agreement
        changed += not np.array_equal(out_mask, mask)
    assert changed >= 5  # it does augment


def test_none_augment_config_is_null(train_config) -> None:
    cfg = train_config("augment=none")
    assert cfg.augment is None


# ---- config and benchmark ----------------------------------------------------------------------


def test_synthetic_data_config_builds_the_default_datamodule(train_config, tmp_path: Path) -> None:
    cfg = train_config(
        "data=synthetic",
        "data.num_training=6",
        "data.num_testing=1",
        "data.volume_shape=[24,28,6]",
        "data.num_workers=0",
        "data.num_folds=2",
        f"data.root={tmp_path / 'synthetic'}",
    )
    module = instantiate(cfg.data, augment=instantiate(cfg.augment))
    module.prepare_data()
    module.setup("fit")
    assert sorted(s for subjects in module.split.values() for s in subjects) == sorted(module.stored)
    assert len(module.stored) == 6 and len(module.predict_cases()) == 1
    assert Path(module.root).parent == tmp_path / "synthetic"
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape[1:] == (1, 28, 24) and batch["mask"].dtype == torch.int64


def test_atlas_config_without_root_names_data_root(train_config) -> None:
    module = instantiate(train_config("data=atlas").data)
    with pytest.raises(Exception, match=r"data\.root is not set: pass data\.root=<folder of the atlas dataset>; looked for ATLAS R2\.0"):
        module.prepare_data()


def test_data_benchmark_reports_store_speedup_and_loader_rate(tmp_path: Path, capsys) -> None:
    from lesionseg.bench.data import main

    results = main(["--subjects", "2", "--shape", "24", "28", "6", "--seconds", "0.2", "--workers", "0", "--nifti-items", "2", "--cache-dir", str(tmp_path)])
    assert results["store_speedup"] == pytest.approx(results["store_slices_per_s"] / results["nifti_slices_per_s"])
    assert results["store_speedup"] > 1 and results["loader_slices_per_s"] > 0
    assert "store speed-up" in capsys.readouterr().out


def test_loaders_never_decode_a_nifti_after_the_store_is_built(r2_root: Path, tmp_path: Path, monkeypatch) -> None:
    import nibabel

    module = atlas_module(r2_root, tmp_path / "cache")
    module.prepare_data()
    module.setup("fit")

    def refuse(*args, **kwargs):
        raise AssertionError("a NIfTI was decoded while reading batches")

    monkeypatch.setattr(nibabel, "load", refuse)
    batches = [batch for loader in (module.train_dataloader(), module.val_dataloader(), module.test_dataloader()) for batch in loader]
    assert sum(len(batch["image"]) for batch in batches) > 0
