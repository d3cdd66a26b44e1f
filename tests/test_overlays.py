"""Validation overlay figures and the callbacks that moved out of the LightningModule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lesionseg.callbacks import TestSubjectTable, ValidationOverlays
from lesionseg.overlays import COLUMNS, MIN_SIDE, OverlaySample, figure_pixels, lesion_region, overlay_figure, short_name, slice_dice


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) < radius**2).astype(np.int64)


def sample(subject: str = "sub-01", slice_index: int = 7) -> OverlaySample:
    target = disc((64, 48), (20, 30), 4)
    prediction = disc((64, 48), (21, 31), 4)
    image = np.random.default_rng(0).random((1, 64, 48)).astype(np.float32) + target
    return OverlaySample(image, target, prediction, subject, slice_index)


def test_figure_has_column_titles_row_labels_dice_and_a_legend() -> None:
    one, two = sample("sub-01", 7), sample("sub-02", 12)
    figure = overlay_figure([one, two], title="validation, epoch 3")
    axes = np.array(figure.axes).reshape(2, len(COLUMNS))
    assert [panel.get_title() for panel in axes[0]] == list(COLUMNS)
    assert [row[0].get_ylabel() for row in axes] == ["sub-01\nslice 7", "sub-02\nslice 12"]
    dice = slice_dice(one.target, one.prediction)
    assert 0 < dice < 1 and [text.get_text() for text in axes[0][2].texts] == [f"Dice {dice:.2f}\nlabel 45 px, predicted 45 px"]
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["ground truth", "prediction", "enlarged region"]
    assert "validation, epoch 3" in [text.get_text() for text in figure.texts]


def test_enlarged_region_is_around_the_lesion_else_the_prediction() -> None:
    target = np.zeros((100, 80), dtype=np.int64)
    target[40:43, 50:52] = 1
    prediction = np.zeros_like(target)
    prediction[90, 5] = 1  # a false positive far away: shown in the whole-slice column, not zoomed on
    top, bottom, left, right = lesion_region(target, prediction)
    assert top <= 40 and bottom >= 43 and left <= 50 and right >= 52 and not (top <= 90 < bottom and left <= 5 < right)
    assert bottom - top == right - left >= MIN_SIDE
    top, bottom, left, right = lesion_region(np.zeros_like(target), prediction)
    assert top <= 90 < bottom and left <= 5 < right
    assert lesion_region(np.zeros_like(target), np.zeros_like(target)) == (0, 100, 0, 80)


def test_long_subject_ids_are_shortened_in_the_middle() -> None:
    uid = "1.3.6.1.4.1.14519.5.2.1.7085.2626.192997540292073877946622133586"
    assert short_name(uid) == "1.3.6.1.4.…46622133586" and short_name("sub-r001s001") == "sub-r001s001"


def batch(subjects: list[str], indices: list[int], areas: list[int]) -> tuple[dict, dict]:
    """A validation batch whose i-th slice holds a square lesion of side areas[i] (0: none), predicted exactly."""
    masks = torch.zeros(len(subjects), 32, 32, dtype=torch.long)
    for item, side in enumerate(areas):
        masks[item, 4 : 4 + side, 4 : 4 + side] = 1
    images = torch.rand(len(subjects), 1, 32, 32)
    return {"image": images, "mask": masks, "subject": subjects, "slice_index": torch.tensor(indices)}, {"prediction": masks.clone()}


def test_overlay_callback_writes_a_png_per_epoch_and_logs_to_tensorboard(tmp_path: Path) -> None:
    tensorboard = TensorBoardLogger(save_dir=str(tmp_path / "tb"))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=2, loggers=[tensorboard])
    callback = ValidationOverlays(num_overlays=2, dirpath=tmp_path / "overlays")
    callback.on_validation_epoch_start(trainer, None)  # type: ignore[arg-type]
    batches = [
        batch(["a", "a", "b"], [0, 1, 0], [2, 6, 0]),  # b shows no lesion: skipped
        batch(["a", "c", "d"], [2, 0, 0], [3, 4, 5]),  # d comes after two subjects were chosen: skipped
    ]
    for index, (data, outputs) in enumerate(batches):
        callback.on_validation_batch_end(trainer, None, outputs, data, index)  # type: ignore[arg-type]
    callback.on_validation_epoch_end(trainer, None)  # type: ignore[arg-type]

    png = tmp_path / "overlays" / "epoch_002.png"
    with Image.open(png) as picture:
        assert picture.size == figure_pixels(rows=2)
    chosen = {subject: entry[1].slice_index for subject, entry in callback._best.items()}
    assert chosen == {"a": 1, "c": 0}  # each subject at its slice with the largest lesion
    tensorboard.experiment.flush()
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_overlay_callback_is_silent_during_the_sanity_check(tmp_path: Path) -> None:
    trainer = SimpleNamespace(sanity_checking=True, is_global_zero=True, current_epoch=0, loggers=[])
    callback = ValidationOverlays(num_overlays=2, dirpath=tmp_path / "overlays")
    data, outputs = batch(["a"], [0], [3])
    callback.on_validation_batch_end(trainer, None, outputs, data, 0)  # type: ignore[arg-type]
    callback.on_validation_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert not (tmp_path / "overlays").exists()


def test_test_subject_table_writes_the_modules_table(tmp_path: Path) -> None:
    table = pd.DataFrame({"subject": ["a", "b"], "dice": [0.5, 1.0], "hd95": [2.0, float("nan")]})
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], default_root_dir=str(tmp_path / "run"))
    TestSubjectTable().on_test_end(trainer, SimpleNamespace(test_subject_table=table))  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "test_subjects.csv"), table)


def test_no_overlays_when_none_are_asked_for(tmp_path: Path) -> None:
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=0, loggers=[])
    callback = ValidationOverlays(num_overlays=0, dirpath=tmp_path / "overlays")
    data, outputs = batch(["a"], [0], [3])
    callback.on_validation_batch_end(trainer, None, outputs, data, 0)  # type: ignore[arg-type]
    callback.on_validation_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert not (tmp_path / "overlays").exists()


class BinaryCrossEntropy(torch.nn.Module):
    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], mask.float())


def slices(subjects: int = 2, depth: int = 3) -> list[dict]:
    """Items as the data modules give them: one slice each, a square lesion on the middle slice."""
    items = []
    for subject in range(subjects):
        for index in range(depth):
            mask = torch.zeros(24, 24, dtype=torch.long)
            if index == depth // 2:
                mask[8:14, 6:12] = 1
            items.append({"image": torch.rand(1, 24, 24) + mask, "mask": mask, "subject": f"sub-{subject}", "slice_index": index})
    return items


def test_callbacks_with_the_real_module_write_overlays_and_the_test_table(tmp_path: Path) -> None:
    """A one-epoch Lightning run: the module's validation_step feeds the overlays, its test stage the table."""
    from functools import partial

    import lightning as L
    from torch.utils.data import DataLoader

    from lesionseg.module import SegmentationModule

    module = SegmentationModule(net=torch.nn.Conv2d(1, 1, 3, padding=1), loss=BinaryCrossEntropy(), optimizer=partial(torch.optim.SGD, lr=0.1))
    loader = DataLoader(slices(), batch_size=2)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        callbacks=[ValidationOverlays(num_overlays=2, dirpath=tmp_path / "overlays"), TestSubjectTable()],
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    trainer.test(module, dataloaders=loader)
    with Image.open(tmp_path / "overlays" / "epoch_000.png") as picture:
        assert picture.size == figure_pixels(rows=2)
    table = pd.read_csv(tmp_path / "test_subjects.csv")
    assert list(table["subject"]) == ["sub-0", "sub-1"]
    assert table["dice"].tolist() == pytest.approx(module.test_subject_table["dice"].tolist())
