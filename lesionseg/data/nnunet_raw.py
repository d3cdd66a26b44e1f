"""Datasets in nnU-Net's raw layout (nnU-Net v2; the Medical Segmentation Decathlon, ISLES'22 as converted).

Isensee et al., Nat Methods 2021. On disk (`data.root` is the `DatasetXXX_Name` folder)::

    <root>/
        dataset.json            {"channel_names": {"0": "DWI", "1": "ADC"}, "labels": {"background": 0, "lesion": 1},
                                 "file_ending": ".nii.gz", "numTraining": N}
        imagesTr/<case>_0000<file_ending> ... <case>_000K   one file per input channel, same geometry
        labelsTr/<case><file_ending>                        integer label map, values among dataset.json's labels
        imagesTs/<case>_0000<file_ending> ...               optional: unlabelled cases, for prediction

Each case is one subject; its channel files, in channel order, are its `Case.image` (decoded into
the channels of one (Z, C, H, W) image, so `data.in_channels` must equal the number of channels).
Volumes (NIfTI) are cut into axial slices as for ATLAS and keep the first channel's affine, so
predicted masks are written in the scan's geometry; 2D files (`.png`, `.tif`) are one-slice cases.
nnU-Net v1's `"modality"` is read as `channel_names`, and region-based labels (lists of values) as
the values they list.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lesionseg.data.cases import Case, CaseArrays, DataError
from lesionseg.data.folder import SUFFIXES, read_planes, to_channels

LOOKS_FOR = "nnU-Net's raw layout (<DatasetXXX_Name>/dataset.json with imagesTr/<case>_0000<file_ending> and labelsTr/<case><file_ending>)"
AFFINE_TOLERANCE = 1e-3  # mm: channels resampled to one grid agree far better than this


def read_dataset_json(root: Path) -> tuple[list[str], set[int], str]:
    """(channel names in order, allowed label values, file ending) from `<root>/dataset.json`."""
    path = root / "dataset.json"
    try:
        description: dict[str, Any] = json.loads(path.read_text())
        channels: dict[str, Any] = description["channel_names"] if "channel_names" in description else description["modality"]
        names = [str(channels[key]) for key in sorted(channels, key=int)]
        labels = _label_values(description["labels"])
        ending = str(description.get("file_ending", ".nii.gz"))
    except FileNotFoundError as error:
        raise DataError(f"{path}: missing; looked for {LOOKS_FOR}") from error
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSON syntax, missing keys, non-integer ids
        raise DataError(f"{path}: not an nnU-Net dataset.json (needs channel_names and labels; {type(error).__name__}: {error})") from error
    if not names:
        raise DataError(f"{path}: channel_names is empty")
    if ending.lower() not in SUFFIXES:
        raise DataError(f"{path}: file_ending {ending!r} is not supported (use {', '.join(SUFFIXES)})")
    return names, labels, ending


def _label_values(labels: dict[str, Any]) -> set[int]:
    """Label values of v2 (`{"name": value or [values]}`) or v1 (`{"value": "name"}`) labels."""
    values: set[int] = set()
    for key, value in labels.items():
        if isinstance(value, str):  # v1: keys are the values
            values.add(int(key))
        elif isinstance(value, list):  # v2 region: the values it is made of
            values.update(int(item) for item in value)
        else:
            values.add(int(value))
    return values | {0}


class NnUNetRawLayout:
    """nnU-Net raw datasets: `imagesTr` + `labelsTr` labelled, `imagesTs` unlabelled, channels per `dataset.json`."""

    name: ClassVar[str] = "nnunet_raw"
    looks_for: ClassVar[str] = LOOKS_FOR

    def detect(self, root: Path) -> bool:
        return (Path(root) / "dataset.json").is_file() and (Path(root) / "imagesTr").is_dir()

    def find(self, root: Path) -> list[Case]:
        root = Path(root)
        channels, labels, ending = read_dataset_json(root)
        meta = {"dataset": root.name, "channels": ",".join(channels), "labels": ",".join(map(str, sorted(labels)))}
        cases = self._cases(root / "imagesTr", root / "labelsTr", channels, ending, meta)
        if (root / "imagesTs").is_dir():
            cases += self._cases(root / "imagesTs", None, channels, ending, meta)
        return sorted(cases, key=lambda case: case.subject)

    @staticmethod
    def _cases(images: Path, labels: Path | None, channels: list[str], ending: str, meta: dict[str, str]) -> list[Case]:
        """Cases of one images folder: every channel file present, and (training) a label for each."""
        pattern = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(ending)}$")
        found: dict[str, set[int]] = {}
        for path in sorted(images.iterdir()):
            match = pattern.match(path.name)
            if path.name.startswith(".") or not path.is_file():
                continue
            if match is None:
                raise DataError(f"{path}: not named <case>_<4-digit channel>{ending} as dataset.json's file_ending asks")
            channel = int(match["channel"])
            if channel >= len(channels):
                raise DataError(f"{path}: channel {channel} is not in dataset.json's channel_names ({len(channels)} channels)")
            found.setdefault(match["case"], set()).add(channel)
        cases = []
        for case_id, present in found.items():
            for channel, channel_name in enumerate(channels):
                if channel not in present:
                    raise DataError(f"{images / f'{case_id}_{channel:04d}{ending}'}: missing (channel {channel}, {channel_name}, of case {case_id})")
            image = tuple(images / f"{case_id}_{channel:04d}{ending}" for channel in range(len(channels)))
            mask: tuple[Path, ...] = ()
            if labels is not None:
                label = labels / f"{case_id}{ending}"
                if not label.is_file():
                    raise DataError(f"{label}: missing (the label of {image[0].name})")
                mask = (label,)
            cases.append(Case(case_id, image, mask, meta))
        if labels is not None and labels.is_dir():
            for label in sorted(labels.glob(f"*{ending}")):
                if label.name[: -len(ending)] not in found:
                    raise DataError(f"{label}: label without images (expected {images / (label.name[: -len(ending)] + '_0000' + ending)})")
        return cases

    def load(self, case: Case) -> CaseArrays:
        """Image (Z, C, H, W) with one channel per file, the first channel's affine, mask (Z, H, W) as stored."""
        planes, affine = read_planes(case.image[0])
        channels = [to_channels(planes, 1, case.image[0])]
        for path in case.image[1:]:
            other, other_affine = read_planes(path)
            _same_geometry(path, (other.shape, other_affine), case.image[0], (planes.shape, affine))
            channels.append(to_channels(other, 1, path))
        mask = None
        if case.mask:
            mask, mask_affine = read_planes(case.mask[0])
            _same_geometry(case.mask[0], (mask.shape, mask_affine), case.image[0], (planes.shape, affine))
            _check_label_values(case.mask[0], mask, {int(value) for value in case.meta["labels"].split(",")})
        return CaseArrays(image=np.concatenate(channels, axis=1), mask=mask, affine=affine)


Geometry = tuple[tuple[int, ...], "np.ndarray | None"]


def _same_geometry(path: Path, geometry: Geometry, reference: Path, reference_geometry: Geometry) -> None:
    """DataError naming `path` when its (shape, affine) differs from the first channel's (affine: beyond 1 micrometre)."""
    (shape, affine), (reference_shape, reference_affine) = geometry, reference_geometry
    if shape[:3] != reference_shape[:3]:
        raise DataError(f"{path}: shape {shape[:3]} differs from {reference.name} {reference_shape[:3]} (axial slices Z, H, W)")
    if affine is not None and reference_affine is not None and not np.allclose(affine, reference_affine, atol=AFFINE_TOLERANCE):
        raise DataError(f"{path}: affine differs from {reference.name}'s (voxel grid or orientation); resample the channels to one grid")


def _check_label_values(path: Path, label: np.ndarray, allowed: set[int]) -> None:
    """DataError when `label` holds a value that dataset.json's labels do not list."""
    values = np.unique(label)
    if not np.array_equal(values, np.round(values)):
        raise DataError(f"{path}: label map holds non-integer values (e.g. {values[values != np.round(values)][0]:g})")
    unknown = sorted(set(values.astype(int).tolist()) - allowed)
    if unknown:
        raise DataError(f"{path}: label value(s) {unknown} not in dataset.json's labels {sorted(allowed)}")
