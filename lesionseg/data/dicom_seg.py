"""A predicted mask as a DICOM Segmentation object (highdicom) referencing its source images.

A PACS viewer overlays a DICOM SEG on the series it references: each SEG frame names its source
instance (and frame, for a multi-frame source) and carries that plane's position, orientation and
spacing, so the mask lands where it was predicted. One segment per foreground class: "lesion" for a
binary model, "class k" for a multi-class one (the mask then holds class indices, a label map).
The SEG gets new random UIDs (a new series in the source's study), as any derived object.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lesionseg.data.dicom_stroke import read_dicom
from lesionseg.data.nifti import one_line
from lesionseg.outputs import atomic_save

SEG_SERIES_NUMBER = 9901


def _software_version() -> str:
    try:
        return version("lesionseg")
    except PackageNotFoundError:
        return "unknown"


def _segments(labels: Sequence[int], binary: bool) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(name="lesionseg", version=_software_version(), family=codes.DCM.ArtificialIntelligence)
    return [
        hd.seg.SegmentDescription(
            segment_number=label,
            segment_label="lesion" if binary else f"class {label}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for label in labels
    ]


def write_dicom_seg(sources: Sequence[Path], mask: np.ndarray, path: Path, binary: bool = True, num_classes: int = 2) -> Path | None:
    """Write the (Z, H, W) `mask` of the DICOM `sources` as a SEG at `path`; None (with a warning) when the
    sources lack what a SEG must reference (e.g. study, series and frame-of-reference UIDs).

    `sources` are the scan's files in the mask's slice order: one file per slice, or one multi-frame file.
    """
    try:
        datasets = [read_dicom(source, stop_before_pixels=True) for source in sources]
        labels = [1] if binary else list(range(1, max(num_classes, int(mask.max()) + 1)))
        pixels = (mask > 0).astype(np.uint8) if binary else mask.astype(np.uint8)
        segmentation = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segments(labels, binary),
            series_instance_uid=generate_uid(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="lesionseg",
            manufacturer_model_name="lesionseg",
            software_versions=_software_version(),
            device_serial_number="0",
            series_description="lesionseg predicted mask",
        )
    except Exception as error:  # highdicom raises ValueError, AttributeError, TypeError on sources it cannot reference
        warnings.warn(f"{sources[0]}: no DICOM SEG written ({one_line(error)})", stacklevel=2)
        return None
    atomic_save(path, lambda temporary: segmentation.save_as(temporary))
    return path
