"""`python -m lesionseg.score pred_dir=<masks> label_dir=<labels> [convention=atlas|isles22] [output_dir=...]`.

Scores any folder of NIfTI masks against a folder of NIfTI labels with the functions the test stage
and `evaluate` use (`lesionseg.evaluation.subject_metrics`), so the three agree. Files are matched by
subject (`match_files`): identical names once `.nii`/`.nii.gz` and predict's `_mask` suffix are
removed, else the BIDS `sub-<label>` entity (and `ses-<label>` when the prediction names one).
Predict's `_probabilities` / `_uncertainty` maps are not masks and are skipped. Each pair must share
shape and affine; masks are binarised as value > 0. The voxel size comes from the label's header.

Writes `scores.csv` (one row per subject) and `scores.json` (mean and std over subjects, the
convention and its source) into a new folder: `output_dir`, or `<pred_dir>/score/<timestamp>/`.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import nibabel as nib
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lesionseg.config import CONF_DIR, UsageError, exit_on_usage_error, parse_overrides
from lesionseg.data.cases import DataError
from lesionseg.data.folder import NIFTI_SUFFIXES
from lesionseg.data.nifti import read_volume
from lesionseg.evaluation import METRIC_NAMES, convention_of, subject_metrics, summarize_subjects
from lesionseg.outputs import atomic_write_text

# Suffixes `lesionseg.predict` gives its outputs: `_mask` is the mask to score, the others are maps.
MASK_SUFFIX = "_mask"
MAP_SUFFIXES = ("_probabilities", "_uncertainty")
BIDS_SUBJECT = re.compile(r"(?:^|_)sub-([A-Za-z0-9]+)")
BIDS_SESSION = re.compile(r"(?:^|_)ses-([A-Za-z0-9]+)")
# Largest difference between two affines that still counts as the same geometry (mm).
AFFINE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class MaskFile:
    """A NIfTI file and the names it can be matched by."""

    path: Path
    stem: str  # the file name without `.nii[.gz]` and without predict's `_mask`

    @property
    def subject(self) -> str | None:
        match = BIDS_SUBJECT.search(self.stem)
        return match.group(1) if match else None

    @property
    def session(self) -> str | None:
        match = BIDS_SESSION.search(self.stem)
        return match.group(1) if match else None


def nifti_stem(path: Path) -> str | None:
    """The name without `.nii` / `.nii.gz`, or None for a file that is not NIfTI."""
    lower = path.name.lower()
    suffix = next((suffix for suffix in NIFTI_SUFFIXES if lower.endswith(suffix)), None)
    return path.name[: -len(suffix)] if suffix else None


def mask_files(folder: Path, key: str) -> list[MaskFile]:
    """Every NIfTI mask below `folder` (recursively, hidden files skipped), predict's maps left out."""
    if not folder.is_dir():
        raise UsageError(f"{key}: not a folder: {folder}")
    found = []
    for path in sorted(folder.rglob("*")):
        stem = nifti_stem(path)
        if stem is None or path.name.startswith(".") or not path.is_file() or stem.endswith(MAP_SUFFIXES):
            continue
        found.append(MaskFile(path, stem.removesuffix(MASK_SUFFIX)))
    if not found:
        raise UsageError(f"{key}: no NIfTI masks (.nii, .nii.gz) in {folder}")
    return found


def _label_for(prediction: MaskFile, labels: list[MaskFile]) -> MaskFile | None:
    """The label of one prediction: identical stem, else the one label with its BIDS subject (and session)."""
    same = [label for label in labels if label.stem == prediction.stem]
    if len(same) == 1:
        return same[0]
    if prediction.subject is None:
        return None
    candidates = [label for label in labels if label.subject == prediction.subject and (prediction.session is None or label.session == prediction.session)]
    if len(candidates) > 1:  # e.g. a raw BIDS folder: prefer the BIDS `mask` suffix over the images beside it
        candidates = [label for label in candidates if label.path.name.lower().split(".")[0].endswith(MASK_SUFFIX)] or candidates
    if len(candidates) > 1:
        names = ", ".join(label.path.name for label in candidates)
        raise DataError(f"{prediction.path}: subject sub-{prediction.subject} matches several labels ({names}); use identical names")
    return candidates[0] if candidates else None


def match_files(pred_dir: Path, label_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """(subject, prediction, label) for every prediction, sorted by subject, and the labels left unmatched.

    The subject is the prediction's name without suffixes (predict's masks: the subject id).

    A prediction without a label, or two predictions for one label, is an error naming the file.
    """
    labels = mask_files(label_dir, "label_dir")
    pairs: dict[Path, tuple[str, Path, Path]] = {}
    for prediction in mask_files(pred_dir, "pred_dir"):
        label = _label_for(prediction, labels)
        if label is None:
            raise DataError(f"{prediction.path}: no label in {label_dir} with the same name or BIDS subject")
        if label.path in pairs:
            raise DataError(f"{prediction.path} and {pairs[label.path][1]}: both match the label {label.path}")
        pairs[label.path] = (prediction.stem, prediction.path, label.path)
    unmatched = [label.path for label in labels if label.path not in pairs]
    return sorted(pairs.values()), unmatched


def read_pair(prediction: Path, label: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Binary prediction and label volumes and the voxel size (mm); DataError naming the pair on a geometry mismatch."""
    pred_voxels, pred_affine = read_volume(prediction)
    label_voxels, label_affine = read_volume(label)
    if pred_voxels.shape != label_voxels.shape:
        raise DataError(f"{prediction} and {label}: shapes {pred_voxels.shape} and {label_voxels.shape} differ")
    if not np.allclose(pred_affine, label_affine, rtol=0.0, atol=AFFINE_TOLERANCE):
        raise DataError(f"{prediction} and {label}: affines differ (largest difference {np.abs(pred_affine - label_affine).max():.3g})")
    header: Any = nib.load(str(label)).header  # a NIfTI header (nibabel types it as the generic one)
    zooms = header.get_zooms()[:3]
    spacing = (float(zooms[0]), float(zooms[1]), float(zooms[2]))
    return pred_voxels > 0, label_voxels > 0, spacing


def new_score_dir(pred_dir: Path, requested: Path | None) -> Path:
    """A new or empty folder (default `<pred_dir>/score/<timestamp>/`); never a user's full one."""
    folder = requested or pred_dir / "score" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"output_dir {folder} exists and is not empty; choose another")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def score_folders(
    pred_dir: str | Path,
    label_dir: str | Path,
    convention: str = "atlas",
    output_dir: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every prediction in `pred_dir` against its label; write scores.csv and scores.json.

    Returns the per-subject table (`subject`, `prediction`, `label`, `spacing`, the metrics) and
    the summary written to JSON (mean, std and the number of subjects with a defined value).
    """
    try:
        rules = convention_of(convention)
    except ValueError as error:
        raise UsageError(str(error)) from None
    pred_dir, label_dir = Path(pred_dir).expanduser(), Path(label_dir).expanduser()
    pairs, unmatched = match_files(pred_dir, label_dir)
    rows = []
    for subject, prediction, label in pairs:
        pred, target, spacing = read_pair(prediction, label)
        metrics = subject_metrics(pred, target, rules.name, spacing)
        rows.append({"subject": subject, **metrics, "prediction": str(prediction), "label": str(label), "spacing": "x".join(f"{value:g}" for value in spacing)})
    table = pd.DataFrame(rows, columns=["subject", *METRIC_NAMES, "prediction", "label", "spacing"])
    means = summarize_subjects(table)
    summary = {
        "convention": rules.name,
        "connectivity": rules.connectivity,
        "volume_unit": rules.volume_unit,
        "source": rules.source,
        "subjects": len(table),
        "mean": {name: means[name] for name in METRIC_NAMES},
        "std": {name: means[f"{name}_std"] for name in METRIC_NAMES},
        "defined": {name: int(table[name].notna().sum()) for name in METRIC_NAMES},
        "pred_dir": str(pred_dir),
        "label_dir": str(label_dir),
        "unmatched_labels": len(unmatched),
    }
    folder = new_score_dir(pred_dir, Path(output_dir).expanduser() if output_dir else None)
    atomic_write_text(folder / "scores.csv", table.to_csv(index=False))
    atomic_write_text(folder / "scores.json", json.dumps({**summary, "output_dir": str(folder)}, indent=2, allow_nan=True))
    summary["output_dir"] = str(folder)
    return table, summary


def print_scores(summary: dict[str, Any]) -> None:
    """Mean ± std per metric, one line each."""
    print(f"{summary['subjects']} subjects, convention {summary['convention']} ({summary['source']})")
    for name in METRIC_NAMES:
        unit = {"hd95": " mm", "asd": " mm", "volume_difference": f" {summary['volume_unit']}"}.get(name, "")
        print(f"  {name:<24} {summary['mean'][name]:.4f} ± {summary['std'][name]:.4f}{unit}")
    print(f"scores written to {summary['output_dir']}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="score")
def app(cfg: DictConfig) -> None:
    """Hydra app: score `cfg.pred_dir` against `cfg.label_dir`; one-line error and exit 2 on bad input."""
    try:
        try:
            pred_dir, label_dir = cfg.pred_dir, cfg.label_dir
        except MissingMandatoryValue as error:
            raise UsageError(f"{error.full_key}=<folder> is required") from None
        _, summary = score_folders(pred_dir, label_dir, cfg.convention, cfg.get("output_dir"))
    except (UsageError, DataError) as error:
        exit_on_usage_error(str(error))
    print_scores(summary)


def check_keys(arguments: Sequence[str]) -> None:
    """UsageError for an override of a key that conf/score.yaml does not have, naming the closest one."""
    known = [str(key) for key in OmegaConf.load(CONF_DIR / "score.yaml") if key not in ("defaults", "hydra")]
    for override in parse_overrides(arguments):
        key = override.key_or_group
        if override.is_add() or key.split("/")[0].split(".")[0] == "hydra" or key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown key '{key}'{hint}; score takes {', '.join(known)}")


def main() -> None:
    """Console entry point: check the keys before Hydra (one-line errors), then run the Hydra app."""
    try:
        check_keys(sys.argv[1:])
    except UsageError as error:
        exit_on_usage_error(str(error))
    app()


if __name__ == "__main__":
    main()
