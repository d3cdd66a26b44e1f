"""`python -m lesionseg.postprocess_select <multirun folder> [--min-sizes 10,20,50,100]`: choose clean-up on validation.

nnU-Net decides from cross-validation whether "keep only the largest component" helps; here each
fold's own validation subjects are predicted by that fold's checkpoint (best, else last; the stored
slices the validation loop reads, with the run's TTA and classifier gate), thresholded, and scored
per subject with and without each clean-up option on the reassembled 3D volume:
`keep_largest`, and `min_size` (voxels) for each of `--min-sizes`.

Rule: an option is kept only if it raises the mean Dice over all validation subjects of all folds
(strictly) without lowering the mean lesion-wise F1; among the options kept, the one with the
highest mean Dice is chosen (ties: the first listed, keep_largest before small before large
sizes); otherwise no clean-up. On multi-focal stroke lesions keep-largest typically raises Dice a
little while losing lesions, which lowers lesion F1, so it is dropped.

Writes `postprocessing.json` beside the runs (in the multirun folder): the rule, each option's
scores, the chosen `inference.*` values. `python -m lesionseg.predict run_dir=<multirun folder>`
applies the choice by default.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lesionseg.config import UsageError, exit_on_usage_error, register_resolvers
from lesionseg.data.cases import DataError
from lesionseg.data.preprocess import Preprocess
from lesionseg.evaluation import subject_metrics
from lesionseg.inference.cleanup import clean_mask
from lesionseg.inference.settings import InferenceSettings

FILENAME = "postprocessing.json"
DEFAULT_MIN_SIZES = (10, 20, 50, 100)
RULE = (
    "an option is kept only if it raises the mean validation Dice (over all subjects of all folds) and does not lower the mean "
    "lesion-wise F1; the kept option with the highest mean Dice is chosen, else no clean-up"
)
NO_CLEANUP: dict[str, Any] = {"keep_largest": False, "min_size": 0, "min_size_ml": 0.0}


def candidate_options(min_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """The clean-up options tried, each alone: keep-largest, then each minimum size (voxels)."""
    return [{**NO_CLEANUP, "keep_largest": True}, *({**NO_CLEANUP, "min_size": int(size)} for size in sorted(min_sizes))]


def mean_scores(cases: Sequence[tuple[np.ndarray, np.ndarray]], settings: InferenceSettings) -> dict[str, float]:
    """Mean Dice and lesion-wise F1 over (raw mask, label) volumes after `settings`' clean-up."""
    scores = [subject_metrics(clean_mask(mask, settings) > 0, label > 0) for mask, label in cases]
    return {name: float(np.mean([score[name] for score in scores])) for name in ("dice", "lesion_f1")}


def select(cases: Sequence[tuple[np.ndarray, np.ndarray]], settings: InferenceSettings, min_sizes: Sequence[int] = DEFAULT_MIN_SIZES) -> dict[str, Any]:
    """Score every option against no clean-up on (thresholded mask, label) volumes; apply the rule."""
    if not cases:
        raise UsageError("no validation subjects to choose a post-processing on")
    base = replace(settings, **NO_CLEANUP)
    baseline = mean_scores(cases, base)
    rows: list[dict[str, Any]] = []
    for option in candidate_options(min_sizes):
        scores = mean_scores(cases, replace(base, **option))
        accepted = scores["dice"] > baseline["dice"] and scores["lesion_f1"] >= baseline["lesion_f1"]
        rows.append({"option": option, **scores, "accepted": accepted})
    kept = [row for row in rows if row["accepted"]]
    best = max(kept, key=lambda row: row["dice"], default=None)  # max keeps the first of equal scores
    return {"rule": RULE, "subjects": len(cases), "baseline": baseline, "candidates": rows, "chosen": best["option"] if best else dict(NO_CLEANUP)}


def validation_cases(job_checkpoint: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(thresholded model-space mask, label) of every validation subject of one fold, by that fold's checkpoint."""
    import hydra

    from lesionseg.factory import load_module
    from lesionseg.inference.predictor import Predictor

    module, cfg = load_module(job_checkpoint)
    settings = replace(InferenceSettings.from_config(cfg), **NO_CLEANUP)
    datamodule = hydra.utils.instantiate(cfg.data, augment=None)
    datamodule.setup("fit")
    predictor = Predictor([module], Preprocess.from_config(cfg.data.preprocess), int(cfg.data.in_channels), settings, "auto")
    cases = []
    for stored in datamodule.subjects("val"):
        image = np.asarray(stored.image, dtype=np.float32)
        if image.shape[1] == 1 < predictor.in_channels:
            image = np.repeat(image, predictor.in_channels, axis=1)
        probabilities, cls_probability = predictor.model_space(image)
        cases.append((predictor.finish(probabilities, cls_probability), np.asarray(stored.mask) > 0))
    return cases


def select_for_runs(run_dir: Path, min_sizes: Sequence[int] = DEFAULT_MIN_SIZES) -> dict[str, Any]:
    """Choose the clean-up of a multirun folder's fold ensemble and write `postprocessing.json` into it."""
    from lesionseg.inference.ensemble import job_checkpoint, job_folders
    from lesionseg.outputs import atomic_write_text

    cases = []
    folds = []
    for job in job_folders(run_dir):
        checkpoint = job_checkpoint(job)
        fold_cases = validation_cases(checkpoint)
        folds.append({"job": job.name, "checkpoint": str(checkpoint), "subjects": len(fold_cases)})
        cases.extend(fold_cases)
    result = {**select(cases, InferenceSettings(), min_sizes), "folds": folds}
    atomic_write_text(run_dir / FILENAME, json.dumps(result, indent=2) + "\n")
    return result


def main(arguments: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lesionseg.postprocess_select", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("run_dir", type=Path, help="a multirun folder of lesionseg.train (one job per fold)")
    parser.add_argument("--min-sizes", default=",".join(map(str, DEFAULT_MIN_SIZES)), help="minimum component sizes to try, in voxels")
    options = parser.parse_args(arguments)
    register_resolvers()
    try:
        sizes = [int(size) for size in options.min_sizes.split(",") if size.strip()]
    except ValueError:
        exit_on_usage_error(f"--min-sizes {options.min_sizes}: give whole numbers of voxels, e.g. 10,20,50")
    try:
        result = select_for_runs(options.run_dir, sizes)
    except (UsageError, DataError) as error:
        exit_on_usage_error(str(error))
    print(f"baseline (no clean-up): Dice {result['baseline']['dice']:.4f}, lesion F1 {result['baseline']['lesion_f1']:.4f} on {result['subjects']} subjects")
    for row in result["candidates"]:
        name = "keep_largest" if row["option"]["keep_largest"] else f"min_size={row['option']['min_size']}"
        print(f"  {name:<16} Dice {row['dice']:.4f}  lesion F1 {row['lesion_f1']:.4f}  {'kept' if row['accepted'] else 'dropped'}")
    print(f"chosen: {result['chosen']} -> {options.run_dir / FILENAME}")


if __name__ == "__main__":
    main(sys.argv[1:])
