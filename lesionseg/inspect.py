"""`python -m lesionseg.inspect data=<name> data.root=<folder> [output_dir=...]`: what a dataset holds, before training.

nnU-Net writes a dataset fingerprint (shapes, spacings, foreground intensities) and checks the data's
integrity before planning; MONAI's DataAnalyzer reports the same kind of statistics. This does it for
any layout the project reads, decoding every case exactly as training does (the layout's `load`,
before preprocessing, so intensities and spacings are the ones on disk), and writes into a new folder
(never an existing one: `output_dir`, or `inspect/<data.name>-<timestamp>/`):

- `dataset_report.json`: cases, subjects, shapes, voxel spacings and orientations; intensity
  percentiles per channel over foreground voxels (non-zero in any channel), from up to 10,000 voxels
  sampled per case as nnU-Net does; label values; empty masks; per case and per subject lesion volume
  (ml, where the scan has a spacing; else voxels) and lesion count (26-connected components in 3D, as
  ATLAS counts lesions); per-site counts for ATLAS; the `fingerprint` `train` records in summary.json.
- `dataset_report.png`: a page of plots: lesion-volume histogram, intensity histogram per channel,
  and a montage of each case's largest lesion slice with its outline.
- `findings` (in the JSON, and printed): integrity problems, listed without stopping: unreadable
  cases, spacing outliers (a voxel size more than 25 % from the median), orientation outliers (axis
  codes other than the most common), masks outside the brain (more than 10 % of the lesion on
  voxels that are the image's minimum in every channel: background), duplicate subjects (identical
  image content under two ids).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import nibabel as nib
import numpy as np
from hydra.errors import InstantiationException
from matplotlib.figure import Figure
from omegaconf import DictConfig
from scipy import ndimage
from tqdm.auto import tqdm

from lesionseg.config import CONF_DIR, UsageError, check_overrides, exit_on_usage_error, register_resolvers
from lesionseg.data.cases import Case, CaseArrays, DataError
from lesionseg.outputs import atomic_write_text, claim_output_dir

PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)
VOXELS_PER_CASE = 10_000  # nnU-Net's foreground intensity sample per case
SPACING_TOLERANCE = 0.25
OUTSIDE_BRAIN_FRACTION = 0.1
MONTAGE_CASES = 12


@dataclass
class CaseReport:
    """What one decoded case contributes to the report."""

    subject: str
    labelled: bool
    shape: list[int]  # (Z, C, H, W) as decoded
    spacing: list[float] | None  # mm, (Z, H, W) order: slice, row, column
    orientation: str | None  # nibabel axis codes, e.g. "RAS"
    site: str | None
    label_values: list[int] = field(default_factory=list)
    lesion_voxels: int = 0
    lesion_ml: float | None = None
    lesion_count: int = 0
    outside_brain_fraction: float | None = None
    content_hash: str = ""


def voxel_spacing(affine: np.ndarray | None) -> list[float] | None:
    """(slice, row, column) voxel sizes in mm of axial slices cut from a volume with this (x, y, z) affine."""
    if affine is None:
        return None
    x, y, z = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return [float(z), float(y), float(x)]


def site_of(case: Case) -> str | None:
    """The acquisition site of an ATLAS case (R2.0: the `R0NN` folder; R1.x: the subject id's site prefix)."""
    release = case.meta.get("release")
    if release == "R2.0" and len(case.image[0].parents) > 3:
        return case.image[0].parents[3].name
    if release == "R1.x":
        return case.subject.split("_")[0]
    return None


def _foreground_sample(image: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to VOXELS_PER_CASE foreground voxels per channel (foreground: non-zero in any channel)."""
    foreground = (image != 0).any(axis=1)
    samples = []
    for channel in range(image.shape[1]):
        values = image[:, channel][foreground]
        if len(values) > VOXELS_PER_CASE:
            values = rng.choice(values, VOXELS_PER_CASE, replace=False)
        samples.append(values.astype(np.float32))
    return samples


def case_report(case: Case, arrays: CaseArrays) -> CaseReport:
    """Shape, geometry, labels, lesion volume and count of one decoded case."""
    image, mask = arrays.image, arrays.mask
    spacing = voxel_spacing(arrays.affine)
    report = CaseReport(
        subject=case.subject,
        labelled=mask is not None,
        shape=[int(size) for size in image.shape],
        spacing=spacing,
        orientation="".join(nib.aff2axcodes(arrays.affine)) if arrays.affine is not None else None,
        site=site_of(case),
        content_hash=hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest(),
    )
    if mask is None:
        return report
    lesion = mask > 0
    report.label_values = [int(value) for value in np.unique(mask)]
    report.lesion_voxels = int(lesion.sum())
    report.lesion_ml = report.lesion_voxels * float(np.prod(spacing)) / 1000.0 if spacing is not None else None
    structure = ndimage.generate_binary_structure(3, 3) if lesion.shape[0] > 1 else ndimage.generate_binary_structure(3, 2)
    report.lesion_count = int(ndimage.label(lesion, structure=structure)[1])
    if report.lesion_voxels:
        background = (image == image.min(axis=(0, 2, 3), keepdims=True)).all(axis=1)
        report.outside_brain_fraction = float((lesion & background).sum() / report.lesion_voxels)
    return report


def _largest_lesion_slice(arrays: CaseArrays) -> tuple[np.ndarray, np.ndarray] | None:
    """(image channel 0, mask) of the slice with the most lesion, for the montage."""
    if arrays.mask is None or not arrays.mask.any():
        return None
    z = int(np.argmax((arrays.mask > 0).sum(axis=(1, 2))))
    return np.asarray(arrays.image[z, 0], dtype=np.float32), np.asarray(arrays.mask[z] > 0)


def _finding(subject: str, check: str, detail: str) -> dict[str, str]:
    return {"subject": subject, "check": check, "detail": detail}


def _mm(values: Sequence[float] | np.ndarray) -> str:
    return "x".join(f"{value:.3g}" for value in values) + " mm"


def find_problems(reports: Sequence[CaseReport]) -> list[dict[str, str]]:
    """Integrity findings over all cases: spacing and orientation outliers, masks outside the brain, duplicates."""
    findings: list[dict[str, str]] = []
    spacings = {report.subject: report.spacing for report in reports if report.spacing is not None}
    if spacings:
        median = np.median(list(spacings.values()), axis=0)
        for subject, spacing in spacings.items():
            if np.abs(np.asarray(spacing) / median - 1.0).max() > SPACING_TOLERANCE:
                findings.append(_finding(subject, "spacing outlier", f"voxel {_mm(spacing)} vs median {_mm(median)}"))
    orientations = Counter(report.orientation for report in reports if report.orientation is not None)
    if orientations:
        usual, count = orientations.most_common(1)[0]
        for report in reports:
            if report.orientation is not None and report.orientation != usual:
                findings.append(_finding(report.subject, "orientation outlier", f"{report.orientation} where {count} cases are {usual}"))
    for report in reports:
        fraction = report.outside_brain_fraction
        if fraction is not None and fraction > OUTSIDE_BRAIN_FRACTION:
            findings.append(_finding(report.subject, "mask outside the brain", f"{fraction:.0%} of the lesion lies on background voxels"))
    by_hash: dict[str, list[str]] = defaultdict(list)
    for report in reports:
        by_hash[report.content_hash].append(report.subject)
    for first, *others in by_hash.values():
        findings.extend(_finding(other, "duplicate subject", f"same image as {first}") for other in others)
    return findings


def dataset_fingerprint(datamodule: Any) -> dict[str, Any]:
    """A cheap identity of the data a run saw (no decoding): counts and a hash of every case's files (name, size).

    Two runs whose fingerprints match read the same files; `train` records it in summary.json.
    """
    cases = datamodule.cases()
    digest = hashlib.sha256()
    for case in sorted(cases, key=lambda case: case.subject):
        digest.update(case.subject.encode())
        for path in (*case.image, *case.mask):
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return {
        "data": datamodule.name,
        "layout": datamodule.layout.name,
        "root": str(datamodule.root),
        "cases": len(cases),
        "labelled": sum(case.labelled for case in cases),
        "files_sha256": digest.hexdigest()[:16],
    }


def _percentiles(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    found = np.percentile(values, PERCENTILES)
    return {**{f"p{p:g}": float(v) for p, v in zip(PERCENTILES, found)}, "mean": float(values.mean()), "std": float(values.std())}


def _plot(path: Path, name: str, reports: Sequence[CaseReport], samples: list[np.ndarray], montage: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """One page: lesion-volume histogram, intensity histogram per channel, montage of lesion slices."""
    columns = max(2, len(samples) + 1, min(len(montage), 6))
    rows = 1 + max(1, -(-len(montage) // columns))
    figure = Figure(figsize=(3.2 * columns, 3.2 * rows), layout="constrained")  # no pyplot: no GUI backend, no global state
    grid = figure.add_gridspec(rows, columns)
    volumes = [r.lesion_ml if r.lesion_ml is not None else r.lesion_voxels for r in reports if r.labelled]
    unit = "ml" if any(r.lesion_ml is not None for r in reports) else "voxels"
    axis = figure.add_subplot(grid[0, 0])
    axis.hist(volumes or [0], bins=20, color="tab:red")
    axis.set(title=f"lesion volume per case ({len(volumes)})", xlabel=unit, ylabel="cases")
    for channel, values in enumerate(samples):
        axis = figure.add_subplot(grid[0, channel + 1])
        axis.hist(values, bins=60, color="tab:blue")
        axis.set(title=f"intensity, channel {channel} (foreground)", xlabel="value", ylabel="voxels (sampled)")
    for index, (subject, image, mask) in enumerate(montage):
        axis = figure.add_subplot(grid[1 + index // columns, index % columns])
        axis.imshow(image, cmap="gray")
        axis.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        axis.set_title(subject, fontsize=8)
        axis.axis("off")
    figure.suptitle(f"{name}: {len(reports)} cases")
    figure.savefig(path, dpi=80)


def inspect_dataset(datamodule: Any, output_dir: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """Decode every case of `datamodule` (its layout and root), write the report and plots; return (report, folder)."""
    cases = datamodule.cases()
    layout = datamodule.layout
    default = Path("inspect") / f"{datamodule.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = claim_output_dir(output_dir or default, unique=output_dir is None)
    rng = np.random.default_rng(0)
    reports: list[CaseReport] = []
    findings: list[dict[str, str]] = []
    samples: list[list[np.ndarray]] = []
    montage: list[tuple[str, np.ndarray, np.ndarray]] = []
    for case in tqdm(cases, desc=f"inspecting {datamodule.name}", unit="case", disable=None, leave=False):
        try:
            arrays = layout.load(case)
        except DataError as error:
            findings.append({"subject": case.subject, "check": "unreadable", "detail": str(error)})
            continue
        reports.append(case_report(case, arrays))
        for channel, values in enumerate(_foreground_sample(arrays.image, rng)):
            if channel == len(samples):
                samples.append([])
            samples[channel].append(values)
        lesion_slice = _largest_lesion_slice(arrays)
        if lesion_slice is not None and len(montage) < MONTAGE_CASES:
            montage.append((case.subject, *lesion_slice))
    if not reports:
        raise DataError(f"data.root={datamodule.root}: no case could be decoded ({findings[0]['detail'] if findings else 'no cases'})")
    findings += find_problems(reports)
    pooled = [np.concatenate(channel) for channel in samples]
    report = summarise(datamodule, cases, reports, pooled, findings)
    atomic_write_text(folder / "dataset_report.json", json.dumps(report, indent=2))
    _plot(folder / "dataset_report.png", datamodule.name, reports, pooled, montage)
    return report, folder


def summarise(
    datamodule: Any, cases: Sequence[Case], reports: Sequence[CaseReport], pooled: list[np.ndarray], findings: list[dict[str, str]]
) -> dict[str, Any]:
    """The JSON report: dataset-level statistics, one entry per case and per subject, the findings."""
    subjects: dict[str, list[CaseReport]] = defaultdict(list)
    meta = {case.subject: case.meta for case in cases}
    for report in reports:
        subjects[meta[report.subject].get("patient", report.subject)].append(report)
    labelled = [report for report in reports if report.labelled]
    spacings = np.array([report.spacing for report in reports if report.spacing is not None])
    spacing_mm = None
    if len(spacings):
        spacing_mm = {"median": np.median(spacings, axis=0).tolist(), "min": spacings.min(axis=0).tolist(), "max": spacings.max(axis=0).tolist()}
    return {
        "data": datamodule.name,
        "root": str(datamodule.root),
        "layout": datamodule.layout.name,
        "fingerprint": dataset_fingerprint(datamodule),
        "cases": len(cases),
        "decoded": len(reports),
        "labelled": len(labelled),
        "unlabelled": len(reports) - len(labelled),
        "subjects": len(subjects),
        "shapes": dict(Counter("x".join(map(str, report.shape[2:])) + f" ({report.shape[1]} ch)" for report in reports)),
        "slices": {"min": min(r.shape[0] for r in reports), "median": float(np.median([r.shape[0] for r in reports])), "max": max(r.shape[0] for r in reports)},
        "spacing_mm": spacing_mm,
        "orientations": dict(Counter(report.orientation for report in reports if report.orientation)),
        "intensity_percentiles": {f"channel {channel}": _percentiles(values) for channel, values in enumerate(pooled)},
        "label_values": sorted({value for report in labelled for value in report.label_values}),
        "empty_masks": [report.subject for report in labelled if report.lesion_voxels == 0],
        "sites": dict(sorted(Counter(report.site for report in reports if report.site).items())),
        "per_subject": {
            subject: {
                "cases": [report.subject for report in group],
                "lesion_ml": None if any(r.lesion_ml is None for r in group) else sum(r.lesion_ml or 0.0 for r in group),
                "lesion_voxels": sum(r.lesion_voxels for r in group),
                "lesion_count": sum(r.lesion_count for r in group),
            }
            for subject, group in sorted(subjects.items())
            if any(r.labelled for r in group)
        },
        "per_case": [report.__dict__ for report in reports],
        "findings": findings,
    }


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="inspect")
def app(cfg: DictConfig) -> None:
    """Hydra app: inspect `cfg.data`; one-line error and exit 2 on bad input."""
    try:
        try:
            datamodule = hydra.utils.instantiate(cfg.data, augment=None)
        except InstantiationException as wrapped:  # a data config's constructor refused its arguments
            raise UsageError(str(wrapped.__cause__ or wrapped)) from None
        report, folder = inspect_dataset(datamodule, cfg.get("output_dir"))
    except (UsageError, DataError) as error:
        exit_on_usage_error(str(error))
    print(f"{report['data']}: {report['cases']} cases ({report['labelled']} labelled), {report['subjects']} subjects; report in {folder}")
    for finding in report["findings"]:
        print(f"  {finding['check']}: {finding['subject']}: {finding['detail']}")


def main() -> None:
    """Console entry point: check group overrides before Hydra (one-line errors), then run the app."""
    register_resolvers()
    try:
        check_overrides(sys.argv[1:])
    except UsageError as error:
        exit_on_usage_error(str(error))
    app()


if __name__ == "__main__":
    main()
