"""ATLAS layouts (R2.0, R1.x), the synthetic ATLAS writer, and rejection of bad input files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from data_fixtures import (  # noqa: F401  (fixtures)
    NUM_TESTING,
    NUM_TRAINING,
    TINY_SHAPE,
    atlas_module,
    pristine_r2,
    r1_root,
    r2_root,
    store_files,
)

from lesionseg.data.atlas import AtlasLayout
from lesionseg.data.cases import DataError
from lesionseg.data.nifti import write_volume
from lesionseg.synthetic.atlas import synthetic_atlas
from lesionseg.synthetic.phantom import phantom


def test_r2_layout_finds_training_labelled_and_testing_unlabelled(r2_root: Path) -> None:
    layout = AtlasLayout()
    assert layout.detect(r2_root)
    cases = layout.find(r2_root)
    labelled = [case for case in cases if case.labelled]
    assert len(labelled) == NUM_TRAINING and len(cases) == NUM_TRAINING + NUM_TESTING
    assert all(case.subject.startswith("sub-r") for case in cases)
    assert all("Testing" in str(case.image[0]) for case in cases if not case.labelled)
    assert all(case.mask[0].name.endswith("_label-L_desc-T1lesion_mask.nii.gz") for case in labelled)


@pytest.mark.parametrize("pointing_at", ["parent of ATLAS_2", "Training"])
def test_r2_root_may_point_at_parent_or_training(r2_root: Path, pointing_at: str) -> None:
    root = r2_root.parent if pointing_at == "parent of ATLAS_2" else r2_root / "Training"
    cases = AtlasLayout().find(root)
    assert sum(case.labelled for case in cases) == NUM_TRAINING


def test_r2_volume_becomes_axial_slices_with_y_rows_and_x_columns(r2_root: Path) -> None:
    layout = AtlasLayout()
    case = layout.find(r2_root)[0]
    arrays = layout.load(case)
    x, y, z = TINY_SHAPE
    assert arrays.image.shape == (z, 1, y, x) and arrays.mask.shape == (z, y, x)
    voxels = np.asarray(nib.load(case.image[0]).dataobj)
    assert arrays.image[3, 0, 7, 5] == voxels[5, 7, 3]


def test_r1_label_is_union_of_lesion_smooth_files(r1_root: Path) -> None:
    layout = AtlasLayout()
    assert layout.detect(r1_root)
    cases = layout.find(r1_root)
    assert len(cases) == 5 and all(len(case.mask) == 2 for case in cases)
    assert cases[0].subject == "Site1_000000"
    split_labels = 0
    for case in cases:
        parts = [np.asarray(nib.load(path).dataobj) for path in case.mask]
        union = np.transpose(np.maximum(*parts), (2, 1, 0))
        np.testing.assert_array_equal(layout.load(case).mask, union)
        split_labels += all(0 < part.sum() < union.sum() for part in parts)
    assert split_labels  # some labels really are spread over both files


@pytest.mark.parametrize("content", ["missing", "empty", "unrelated"])
def test_wrong_root_names_data_root_and_layouts_looked_for(tmp_path: Path, content: str) -> None:
    root = tmp_path / "data"
    if content != "missing":
        root.mkdir()
    if content == "unrelated":
        (root / "notes.txt").write_text("not a dataset")
    module = atlas_module(root, tmp_path / "cache")
    with pytest.raises(DataError, match=r"data\.root=.*looked for ATLAS R2\.0 .* or ATLAS R1\.x") as error:
        module.prepare_data()
    assert "\n" not in str(error.value)


def test_training_subject_without_mask_is_an_error_naming_the_image(r2_root: Path) -> None:
    case = AtlasLayout().find(r2_root)[0]
    case.mask[0].unlink()
    with pytest.raises(DataError, match=f"{case.image[0]}: no lesion mask found"):
        AtlasLayout().find(r2_root)


def test_testing_subjects_are_skipped_for_training_but_available_for_prediction(r2_root: Path, tmp_path: Path) -> None:
    module = atlas_module(r2_root, tmp_path / "cache")
    module.prepare_data()
    module.setup("fit")
    testing = {case.subject for case in module.predict_cases()}
    assert len(testing) == NUM_TESTING
    assert not testing & {s for subjects in module.split.values() for s in subjects}
    module.setup("predict")
    batches = list(module.predict_dataloader())
    assert {s for batch in batches for s in batch["subject"]} == testing
    assert all("mask" not in batch for batch in batches)
    assert sum(len(batch["subject"]) for batch in batches) == NUM_TESTING * TINY_SHAPE[2]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rewrite(path: Path, change) -> None:
    image = nib.load(path)
    voxels = np.asarray(image.dataobj).astype(np.float32)
    write_volume(path, change(voxels), image.affine)


BAD_INPUTS = {
    "truncated image": ("image", _truncate, "unreadable NIfTI"),
    "not gzip": ("image", lambda p: p.write_bytes(gzip.compress(b"")[:5]), "unreadable NIfTI"),
    "NaN voxel": ("image", lambda p: _rewrite(p, lambda v: np.where(v == v.max(), np.nan, v)), "NaN or infinite"),
    "inf voxel": ("image", lambda p: _rewrite(p, lambda v: np.where(v == v.max(), -np.inf, v)), "NaN or infinite"),
    "mask shape": ("mask", lambda p: _rewrite(p, lambda v: v[:-2]), "mask shape .* differs from image shape"),
}


@pytest.mark.parametrize("problem", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_error_naming_the_file_and_leaves_cache_untouched(r2_root: Path, tmp_path: Path, problem: str) -> None:
    module = atlas_module(r2_root, tmp_path / "cache")
    module.prepare_data()
    before = store_files(tmp_path / "cache")
    which, damage, message = BAD_INPUTS[problem]
    case = module.labelled_cases()[2]
    bad_file = case.image[0] if which == "image" else case.mask[0]
    damage(bad_file)
    with pytest.raises(DataError, match=message) as error:
        atlas_module(r2_root, tmp_path / "cache").prepare_data()
    assert str(bad_file) in str(error.value) and "\n" not in str(error.value)
    assert store_files(tmp_path / "cache") == before  # no new, half-written or replaced entry


def test_non_binary_mask_is_binarised_with_a_warning_or_rejected_when_strict(r2_root: Path, tmp_path: Path) -> None:
    case = AtlasLayout().find(r2_root)[0]
    _rewrite(case.mask[0], lambda v: v * 3)  # values {0, 3}
    with pytest.raises(DataError, match=f"{case.mask[0]}: mask values \\[0.0, 3.0\\]"):
        atlas_module(r2_root, tmp_path / "strict", strict_masks=True).prepare_data()
    assert not list((tmp_path / "strict" / "store").rglob(f"{case.subject}*"))
    module = atlas_module(r2_root, tmp_path / "cache")
    with pytest.warns(UserWarning, match=f"{case.mask[0]}: .*binarised"):
        module.prepare_data()
    module.setup("fit")
    stored = module.stored[case.subject]
    assert set(np.unique(stored.mask).tolist()) == {0, 1}
    with pytest.raises(DataError, match="strict_masks=true"):  # a stored, binarised entry stays rejected
        atlas_module(r2_root, tmp_path / "cache", strict_masks=True).prepare_data()


def test_mask_stored_as_0_255_is_accepted_silently(r2_root: Path, tmp_path: Path, recwarn) -> None:
    case = AtlasLayout().find(r2_root)[0]
    _rewrite(case.mask[0], lambda v: v * 255)
    module = atlas_module(r2_root, tmp_path / "cache", strict_masks=True)
    module.setup("fit")
    assert set(np.unique(module.stored[case.subject].mask).tolist()) == {0, 1}
    assert not [w for w in recwarn if "binarised" in str(w.message)]


def test_synthetic_atlas_is_deterministic_and_generated_once(tmp_path: Path) -> None:
    first = synthetic_atlas(tmp_path / "a", 3, 1, TINY_SHAPE, seed=5)
    second = synthetic_atlas(tmp_path / "b", 3, 1, TINY_SHAPE, seed=5)
    files = sorted(p.relative_to(first) for p in first.rglob("*.nii.gz"))
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.nii.gz")) and len(files) == 3 * 2 + 1
    for relative in files:
        a, b = (np.asarray(nib.load(root / relative).dataobj) for root in (first, second))
        np.testing.assert_array_equal(a, b)
    mtime = (first / files[0]).stat().st_mtime_ns
    assert synthetic_atlas(tmp_path / "a", 3, 1, TINY_SHAPE, seed=5) == first
    assert (first / files[0]).stat().st_mtime_ns == mtime
    assert synthetic_atlas(tmp_path / "a", 3, 1, TINY_SHAPE, seed=6) != first
    masks = [np.asarray(nib.load(p).dataobj) for p in first.rglob("*_mask.nii.gz")]
    assert all(mask.any() for mask in masks)  # every subject has at least one lesion


def test_phantom_lesions_are_hypointense_and_inside_the_brain() -> None:
    sample = phantom((48, 56, 12), np.random.default_rng(0))
    lesion, brain = sample.mask.astype(bool), sample.image > 0
    assert lesion.any() and not (lesion & ~brain).any()
    assert sample.image[lesion].mean() < 0.7 * sample.image[brain & ~lesion].mean()
    flat = phantom((64, 64), np.random.default_rng(0), lesion_intensity=180.0)
    lesion, brain = flat.mask.astype(bool), flat.image > 0
    assert flat.image.shape == (64, 64) and flat.image[lesion].mean() > flat.image[brain & ~lesion].mean()
