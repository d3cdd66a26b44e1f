"""`Predictor`: one checkpoint or an ensemble of them, applied to a volume array, a scan file or a folder.

The Python API under `lesionseg.predict` (as nnU-Net's `nnUNetPredictor` is under its CLI):

```python
from lesionseg.inference.predictor import Predictor
predictor = Predictor.from_checkpoints(["fold0/checkpoints/last.ckpt", "fold1/checkpoints/last.ckpt"])
result = predictor.predict_array(volume)        # (Z, C, H, W) decoded slices, or (Z, H, W)
result.mask, result.probabilities, result.uncertainty
rows = predictor.predict_path("/scans", "/results", save_probabilities=True)
```

One preprocessing path: a scan goes through the checkpoint's own `Preprocess`, and its model-space
image is then rounded to float16 and back, exactly as the slice store holds training, validation
and test images, so `predict` feeds the model the numbers the test stage fed it and writes the
masks the test stage scored.

Per scan: every member's probabilities (after its own flip TTA, which averages logits) are averaged;
binary masks are mean foreground probability > `inference.threshold` (argmax when multi-class);
classifier gating uses the members' mean lesion probability; component clean-up runs on the whole
model-space volume (as in the test stage); the mask is then mapped back to the scan's geometry.
Uncertainty is the predictive entropy of the mean class probabilities, normalised to [0, 1]
(binary: the entropy in bits of p and 1 - p), so it is defined for one member as for many.

Geometry rule: with a `preprocess.crop`, a scan whose slices are smaller than the crop's extent is
refused with one line naming the file, its size and the size needed (resample it to the training
grid first); larger slices are cropped at the trained offsets, and `predictions.csv` says so
(`model_region`: the rows and columns the model saw). `target_size` pads/centre-crops or resizes any
size, as in training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from lesionseg.data.cases import CaseArrays, DataError
from lesionseg.data.preprocess import Preprocess
from lesionseg.data.scans import Scan, input_scans, voxel_volume_ml, write_prediction, write_probabilities, write_volume_map
from lesionseg.data.store import FLOAT16_MAX
from lesionseg.data.validate import checked
from lesionseg.inference.cleanup import clean_mask, count_components
from lesionseg.inference.ensemble import check_members
from lesionseg.inference.settings import InferenceSettings
from lesionseg.module import SegmentationModule


@dataclass
class Prediction:
    """One scan's result in its decoded slice geometry (Z, H, W) / (Z, K, H, W)."""

    mask: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    cls_probability: np.ndarray | None = None

    @property
    def foreground(self) -> np.ndarray:
        """Probability of any lesion class (Z, H, W): p for binary models, 1 - p(background) otherwise."""
        return self.probabilities[:, 0] if self.probabilities.shape[1] == 1 else 1.0 - self.probabilities[:, 0]


def as_stored(image: np.ndarray, source: Path | str) -> np.ndarray:
    """The model-space image at the slice store's precision (float16), back in float32."""
    peak = float(np.abs(image).max(initial=0.0))
    if peak > FLOAT16_MAX:
        raise DataError(f"{source}: preprocessed intensities reach {peak:.3g}, beyond float16; the checkpoint's normalisation does not fit this scan")
    return image.astype(np.float16).astype(np.float32)


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Predictive entropy of (Z, K, H, W) class probabilities (K = 1: binary p), in [0, 1]."""
    p = probabilities.astype(np.float64)
    classes = np.concatenate([1.0 - p, p], axis=1) if p.shape[1] == 1 else p
    terms = np.where(classes > 0, classes * np.log(np.clip(classes, 1e-12, None)), 0.0)
    return (-terms.sum(axis=1) / math.log(classes.shape[1])).astype(np.float32)


def choose_device(name: str | torch.device) -> torch.device:
    """`auto` (a GPU when there is one), `cpu` or `cuda`; ValueError otherwise."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device={name}: use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda: no CUDA device is available")
    return torch.device(name)


class Predictor:
    """Members (trained modules sharing one preprocessing) and the inference settings that finish masks."""

    def __init__(
        self,
        members: Sequence[SegmentationModule],
        preprocess: Preprocess,
        in_channels: int,
        settings: InferenceSettings,
        device: str | torch.device = "auto",
        batch_size: int = 16,
    ) -> None:
        if not members:
            raise ValueError("a Predictor needs at least one member")
        self.device = choose_device(device)
        self.members = [member.eval().to(self.device) for member in members]
        self.preprocess = preprocess
        self.in_channels = in_channels
        self.settings = settings
        self.batch_size = max(int(batch_size), 1)
        self.num_classes = members[0].num_classes
        for member in self.members:
            member.inference = replace(settings, grid=member.inference.grid)  # TTA and threshold of this predictor

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[Path | str] | Path | str,
        configs: Sequence[DictConfig] | None = None,
        settings: InferenceSettings | None = None,
        device: str | torch.device = "auto",
        batch_size: int = 16,
    ) -> Predictor:
        """Members from checkpoint files (their stored configs, or `configs` with overrides applied).

        The members must share their preprocessing (UsageError naming both checkpoints otherwise);
        `settings` default to the first member's `inference` node.
        """
        from lesionseg.factory import load_module

        paths = [paths] if isinstance(paths, str | Path) else list(paths)
        loaded = [load_module(path, None if configs is None else configs[index]) for index, path in enumerate(paths)]
        cfgs = [cfg for _, cfg in loaded]
        check_members([str(path) for path in paths], cfgs)
        first = cfgs[0]
        return cls(
            [module for module, _ in loaded],
            Preprocess.from_config(first.data.preprocess),
            int(first.data.in_channels),
            settings or InferenceSettings.from_config(first),
            device,
            batch_size,
        )

    # ------------------------------------------------------------------ model space
    @torch.no_grad()
    def model_space(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean class probabilities (Z, K, H', W') and mean slice lesion probability (Z,) or None, over members."""
        total: np.ndarray | None = None
        cls_total: np.ndarray | None = None
        for member in self.members:
            probabilities, lesion = [], []
            for start in range(0, len(image), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(image[start : start + self.batch_size])).to(self.device)
                seg_logits, cls_logits = member.inference_logits(batch)
                probabilities.append(member.probabilities(seg_logits.float()).cpu().numpy())
                if cls_logits is not None:
                    lesion.append(torch.sigmoid(cls_logits.float()).reshape(len(batch), -1).amax(dim=1).cpu().numpy())
            stacked = np.concatenate(probabilities).astype(np.float64)
            total = stacked if total is None else total + stacked
            if lesion:
                cls_stacked = np.concatenate(lesion).astype(np.float64)
                cls_total = cls_stacked if cls_total is None else cls_total + cls_stacked
        assert total is not None
        count = len(self.members)
        return (total / count).astype(np.float32), None if cls_total is None else (cls_total / count).astype(np.float32)

    def finish(self, probabilities: np.ndarray, cls_probability: np.ndarray | None, voxel_ml: float | None = None) -> np.ndarray:
        """Model-space mask (Z, H', W') uint8: threshold or argmax, classifier gate, clean-up."""
        if self.num_classes == 1:
            mask = (probabilities[:, 0] > self.settings.threshold).astype(np.uint8)
        else:
            mask = probabilities.argmax(axis=1).astype(np.uint8)
        if self.settings.cls_gate is not None and cls_probability is not None:
            mask = mask * (cls_probability >= self.settings.cls_gate).astype(np.uint8)[:, None, None]
        if self.settings.cleans_up and self.num_classes == 1:
            mask = clean_mask(mask, self.settings, voxel_ml)
        return mask

    # ------------------------------------------------------------------ arrays, scans, files
    def model_input(self, image: np.ndarray, source: Path | str = "array") -> np.ndarray:
        """Decoded (Z, C, H, W) float32 slices -> the model-space image the slice store would hold."""
        if image.ndim == 3:
            image = image[:, None]
        if image.shape[1] == 1 < self.in_channels:
            image = np.repeat(image, self.in_channels, axis=1)
        if image.shape[1] != self.in_channels:
            raise DataError(f"{source}: {image.shape[1]} channels, but the model takes {self.in_channels}")
        crop = self.preprocess.crop
        if crop is not None and (image.shape[2] < crop[0][1] or image.shape[3] < crop[1][1]):
            raise DataError(
                f"{source}: slices of {image.shape[2]}x{image.shape[3]} are smaller than the checkpoint's crop "
                f"(preprocess.crop={[list(part) for part in crop]} needs at least {crop[0][1]}x{crop[1][1]}); resample the scan to the training grid"
            )
        try:
            model_space, _ = self.preprocess(image.astype(np.float32, copy=False), None)
        except ValueError as error:
            raise DataError(f"{source}: {error}") from None
        return as_stored(model_space, source)

    def predict_array(self, image: np.ndarray, voxel_ml: float | None = None, source: Path | str = "array") -> Prediction:
        """Predict decoded slices (Z, C, H, W) or (Z, H, W); the result is in the same slice geometry."""
        size = (int(image.shape[-2]), int(image.shape[-1]))
        model_space = self.model_input(image, source)
        probabilities, cls_probability = self.model_space(model_space)
        mask = self.finish(probabilities, cls_probability, self._model_voxel_ml(voxel_ml, size, model_space.shape[-2:]))
        uncertainty = normalised_entropy(probabilities)
        return Prediction(
            mask=self.preprocess.restore(mask, size),
            probabilities=self.preprocess.restore(probabilities, size, cv2.INTER_LINEAR),
            uncertainty=self.preprocess.restore(uncertainty, size, cv2.INTER_LINEAR),
            cls_probability=cls_probability,
        )

    def _model_voxel_ml(self, voxel_ml: float | None, size: tuple[int, int], model_size: Sequence[int]) -> float | None:
        """The volume of one model-space voxel: the scan's, scaled when `resize` changed the in-plane grid."""
        if voxel_ml is None or self.preprocess.resize_mode != "resize" or self.preprocess.target_size is None:
            return voxel_ml
        crop = self.preprocess.crop
        height, width = (crop[0][1] - crop[0][0], crop[1][1] - crop[1][0]) if crop else size
        return voxel_ml * height * width / (int(model_size[0]) * int(model_size[1]))

    def scan_image(self, scan: Scan) -> np.ndarray:
        """A scan decoded and validated as training does it (its mask, if any, is neither read nor checked)."""
        decoded: CaseArrays = scan.decode()
        arrays, _ = checked(replace(scan.case, mask=()), CaseArrays(image=decoded.image, mask=None))
        return arrays.image

    def predict_scan(self, scan: Scan) -> Prediction:
        return self.predict_array(self.scan_image(scan), voxel_volume_ml(scan), scan.case.image[0])

    def write_scan(self, scan: Scan, folder: Path, save_probabilities: bool = False) -> dict[str, Any]:
        """Predict one scan, write its mask (and maps) into `folder`; return its predictions.csv row."""
        result = self.predict_scan(scan)
        mask_files = write_prediction(scan, result.mask, folder, binary=self.num_classes == 1)
        lesion = result.mask > 0
        voxel_ml = voxel_volume_ml(scan)
        row: dict[str, Any] = {
            "subject": scan.case.subject,
            "status": "ok",
            "source": str(scan.case.image[0]),
            "slices": int(len(result.mask)),
            "mask": str(mask_files[0] if len(mask_files) == 1 else mask_files[0].parent),
            "lesion_voxels": int(lesion.sum()),
            "lesion_ml": None if voxel_ml is None else float(lesion.sum()) * voxel_ml,
            "components": count_components(lesion, self.settings),
            "mean_uncertainty_in_lesion": float(result.uncertainty[lesion].mean()) if lesion.any() else float("nan"),
        }
        crop = self.preprocess.crop
        if crop is not None:  # what the model saw; outside it the mask is empty by construction
            height, width = result.mask.shape[-2:]
            row["model_region"] = f"rows {crop[0][0]}:{crop[0][1]}, cols {crop[1][0]}:{crop[1][1]} of {height}x{width} slices"
        if save_probabilities:
            write_probabilities(scan, result.probabilities, folder)
            if scan.is_volume:
                row["probabilities"] = str(write_volume_map(scan, result.foreground, folder, "probabilities"))
                row["uncertainty"] = str(write_volume_map(scan, result.uncertainty, folder, "uncertainty"))
        if result.cls_probability is not None:
            row["cls_probability_max"] = float(result.cls_probability.max())
        return row

    def predict_path(self, path: Path | str, folder: Path | str, save_probabilities: bool = False) -> list[dict[str, Any]]:
        """Every scan at `path` (a file or a folder) into `folder`; a scan that fails is a row with its one-line error."""
        return self.predict_scans(input_scans(Path(path), self.in_channels), Path(folder), save_probabilities)

    def predict_scans(self, scans: Sequence[Scan], folder: Path, save_probabilities: bool = False, report: Any = None) -> list[dict[str, Any]]:
        """Predict scans one by one; each fails alone (DataError: its row says why, `report(message)` is told)."""
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for scan in scans:
            try:
                rows.append(self.write_scan(scan, folder, save_probabilities))
            except DataError as error:
                if report is not None:
                    report(str(error))
                rows.append({"subject": scan.case.subject, "status": f"failed: {error}", "source": str(scan.case.image[0])})
        return rows
