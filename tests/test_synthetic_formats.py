"""Synthetic data in each format (`lesionseg.synthetic`): generated deterministically, cached once, and
trained through the real layout (`data=synthetic`: ATLAS R2.0, `data=synthetic_lgg`: kaggle_3m; the
folder writer trains in test_layout_training.py)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lesionseg.data.lgg import LggLayout
from lesionseg.synthetic.atlas import write_atlas_r2
from lesionseg.synthetic.cache import generated, writer_parameters
from lesionseg.synthetic.folder import write_synthetic_folder
from lesionseg.synthetic.lgg import write_synthetic_lgg
from lesionseg.synthetic.phantom import phantom
from lesionseg.training import train

WRITERS = {
    "atlas": functools.partial(write_atlas_r2, num_training=2, num_testing=1, shape=(20, 24, 6), seed=1),
    "lgg": functools.partial(write_synthetic_lgg, n_subjects=2, n_slices=5, size=32, seed=1),
    "folder": functools.partial(write_synthetic_folder, n_subjects=3, size=24, n_slices=3, seed=1),
}
QUICK = ("data.num_workers=0", "logger=csv", "callbacks.model_summary=null", "callbacks.progress_bar=null", "trainer.num_sanity_val_steps=0")


def tree_digest(root: Path) -> str:
    """One hash of every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", list(WRITERS))
def test_each_format_generates_the_same_bytes_twice(name: str, tmp_path: Path) -> None:
    first, second = (WRITERS[name](tmp_path / run) for run in ("a", "b"))
    assert len(list(first.rglob("*.*"))) > 3
    assert tree_digest(first) == tree_digest(second)
    other_seed = WRITERS[name](tmp_path / "c", seed=2)
    assert tree_digest(other_seed) != tree_digest(first)


def test_generated_writes_once_per_parameter_set(tmp_path: Path) -> None:
    writer = WRITERS["lgg"]
    root = generated(tmp_path, writer)
    stamp = (root / "data.csv").stat().st_mtime_ns
    assert generated(tmp_path, writer) == root and (root / "data.csv").stat().st_mtime_ns == stamp
    assert '"writer": "lesionseg.synthetic.lgg.write_synthetic_lgg"' in (root / "parameters.json").read_text()
    other = generated(tmp_path, functools.partial(writer, seed=5))
    assert other != root and writer_parameters(writer)["n_slices"] == 5
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([root.name, other.name])  # no temporary folder left behind


def test_lgg_glioma_is_flair_bright_and_spans_part_of_the_slices(tmp_path: Path) -> None:
    root = write_synthetic_lgg(tmp_path, 3, seed=0, n_slices=24, size=64)
    for case in LggLayout().find(root):
        arrays = LggLayout().load(case)
        lesion = arrays.mask > 0
        with_lesion = lesion.any(axis=(1, 2)).mean()
        assert 0.15 < with_lesion < 0.7  # empty slices remain, as in kaggle_3m
        image = arrays.image.transpose(0, 2, 3, 1)  # (Z, H, W, RGB)
        brain = image.sum(-1) > 0
        flair = image[..., 1]
        assert flair[lesion].mean() > 1.2 * flair[brain & ~lesion].mean()
    mask = tifffile.imread(next(root.glob("*/*_mask.tif")))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}


def test_phantom_lesions_span_fewer_thick_slices() -> None:
    thin = phantom((48, 48, 48), np.random.default_rng(3), num_lesions=(1, 1))
    thick = phantom((48, 48, 48), np.random.default_rng(3), num_lesions=(1, 1), spacing=(1.0, 1.0, 4.0))
    assert thick.mask.any(axis=(0, 1)).sum() < thin.mask.any(axis=(0, 1)).sum()
    with pytest.raises(ValueError, match="spacing"):
        phantom((16, 16), np.random.default_rng(0), spacing=(1.0,))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("writer", "overrides"),
    [
        ("write_atlas_r2", ("data=synthetic", "data.num_training=6", "data.num_testing=1", "data.volume_shape=[32,32,4]")),
        ("write_synthetic_lgg", ("data=synthetic_lgg", "data.writer.n_subjects=6", "data.writer.n_slices=4", "data.writer.size=32")),
    ],
    ids=["atlas", "lgg"],
)
def test_synthetic_data_trains_through_the_real_layout(train_config, isolated_cache: Path, writer: str, overrides: tuple[str, ...]) -> None:
    cfg = train_config(*overrides, *QUICK, "model.base_channels=4", "data.batch_size=4", "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    _, summary = train(cfg)
    assert summary["status"] == "ok" and {"dice", "iou"} <= set(summary["test"])
    written = [path.parent for path in (isolated_cache / "synthetic").glob("*/parameters.json") if f".{writer}" in path.read_text()]
    assert written and all((path / "parameters.json").is_file() for path in written)
