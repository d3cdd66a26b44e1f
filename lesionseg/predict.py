"""`python -m lesionseg.predict ckpt_path=<ckpt> input=<file or folder> [key=value ...]`: masks for new scans.

A Hydra app (`conf/predict.yaml`) over the Python API `lesionseg.inference.predictor.Predictor`. The
checkpoint's stored config is the run (`lesionseg.app_config`): every scan goes through exactly the
training pipeline (decoding, validation, preprocessing, the slice store's float16 precision, grid
inference, flip TTA), then the mask is finished (threshold, classifier gate, clean-up on the whole
volume) and mapped back to the scan's own geometry and format (`lesionseg.data.scans`).

Checkpoints: `ckpt_path=<file or run folder>`, `ckpt_path=[a,b,...]` (an ensemble: probabilities
averaged), or `run_dir=<multirun folder>` (every fold's best checkpoint; the folder's
`postprocessing.json` from `lesionseg.postprocess_select` is applied unless the command line sets
`inference.*` clean-up keys). `-m ckpt_path=a,b` predicts with each checkpoint alone.

Scans: `input=<file or folder>`, else the checkpoint's dataset cases under `data.root`
(`cases=unlabelled`, e.g. ATLAS R2.0 `Testing/`; `cases=all` predicts every case).

Writes `predictions.csv` (per scan: files, slices, lesion voxels and ml, lesions counted at the clean-up's
connectivity (`inference.connectivity`, 26 in 3D by default), mean
uncertainty inside the predicted lesion, classifier probability) and `predict.json`. A scan that
cannot be read or does not fit the checkpoint's preprocessing is reported on one line naming the
file and listed as failed; the others are still predicted; the exit code is then 2.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lesionseg.app_config import app_overrides, check_keys, checked_main, checkpoint_config, compose_app, in_sweep
from lesionseg.checkpoints import load_checkpoint, new_output_dir
from lesionseg.config import CONF_DIR, UsageError, exit_on_usage_error, register_resolvers, resolve_checkpoint
from lesionseg.data.cases import DataError
from lesionseg.data.scans import Scan, input_scans, layout_scans
from lesionseg.inference.ensemble import run_members
from lesionseg.inference.predictor import Predictor
from lesionseg.inference.settings import InferenceSettings
from lesionseg.outputs import atomic_write
from lesionseg.summary import write_summary

log = logging.getLogger("lesionseg.predict")
OWN_KEYS = ("ckpt_path", "run_dir", "input", "cases", "output_dir", "save_probabilities", "batch_size", "device", "task_name", "split")
CASE_CHOICES = ("unlabelled", "all")
POSTPROCESSING_FILE = "postprocessing.json"
CLEANUP_KEYS = ("keep_largest", "min_size", "min_size_ml", "connectivity", "cleanup_space")


def member_paths(app: DictConfig) -> list[Path]:
    """The checkpoint files named by `ckpt_path` (one, a run folder, or a list) or `run_dir`."""
    run_dir = app.get("run_dir")
    given = not OmegaConf.is_missing(app, "ckpt_path") and app.ckpt_path is not None
    if run_dir and given:
        raise UsageError("give ckpt_path=<checkpoint(s)> or run_dir=<multirun folder>, not both")
    if run_dir:
        return run_members(Path(run_dir).expanduser())
    if not given:
        raise UsageError("ckpt_path=<checkpoint file> is required (or ckpt_path=[a,b,...], or run_dir=<multirun folder>)")
    names = list(app.ckpt_path) if OmegaConf.is_list(app.ckpt_path) else [app.ckpt_path]
    if not names:
        raise UsageError("ckpt_path=[]: name at least one checkpoint")
    return [Path(str(resolve_checkpoint(str(name), None, Path.cwd()))) for name in names]


def member_configs(paths: list[Path], app: DictConfig, overrides: list[str]) -> list[DictConfig]:
    """Each member's stored config with the command line applied (struct mode: unknown keys are errors)."""
    return [checkpoint_config(load_checkpoint(path)[1], app, overrides, OWN_KEYS, str(path)) for path in paths]


def chosen_postprocessing(app: DictConfig, settings: InferenceSettings, overrides: list[str]) -> tuple[InferenceSettings, dict[str, Any] | None]:
    """`run_dir`'s postprocessing.json applied to `settings`, unless the command line sets clean-up keys."""
    run_dir = app.get("run_dir")
    if not run_dir or not (Path(run_dir) / POSTPROCESSING_FILE).is_file():
        return settings, None
    if any(override.lstrip("+").split("=")[0] in {f"inference.{key}" for key in CLEANUP_KEYS} for override in overrides):
        return settings, None
    chosen = json.loads((Path(run_dir) / POSTPROCESSING_FILE).read_text())["chosen"]
    return replace(settings, **{key: value for key, value in chosen.items() if key in CLEANUP_KEYS}), chosen


def anchor_checkpoint(app: DictConfig, paths: list[Path]) -> Path:
    """The path whose run folder holds the default output folder: the first checkpoint's run, or `run_dir`."""
    return Path(app.run_dir) / "checkpoints" / "ensemble" if app.get("run_dir") else paths[0]


def find_scans(app: DictConfig, cfg: DictConfig, overrides: list[str]) -> list[Scan]:
    """The scans named by `input=`, else the checkpoint's dataset cases under `data.root`."""
    if app.get("input"):
        if any(override.split("=")[0] == "cases" for override in overrides):
            raise UsageError("give input=<scans> or cases=unlabelled|all (with data.root), not both")
        return input_scans(Path(app.input), cfg.data.in_channels)
    which = app.get("cases") or "unlabelled"
    if which not in CASE_CHOICES:
        raise UsageError(f"cases={which}: use one of {', '.join(CASE_CHOICES)}")
    datamodule = hydra.utils.instantiate(cfg.data, augment=None)
    cases = datamodule.cases() if which == "all" else datamodule.predict_cases()
    if not cases:
        raise UsageError(f"data.root={datamodule.root}: no unlabelled cases to predict; pass cases=all or input=<scans>")
    return layout_scans(cases, datamodule.layout)


def run(app: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Predict every scan; write masks, predictions.csv and predict.json; return the summary."""
    started = time.perf_counter()
    paths = member_paths(app)
    configs = member_configs(paths, app, overrides)
    cfg = configs[0]
    try:
        settings = InferenceSettings.from_config(cfg)
    except ValueError as error:
        raise UsageError(str(error)) from None
    settings, chosen = chosen_postprocessing(app, settings, overrides)
    scans = find_scans(app, cfg, overrides)
    requested = Path(app.output_dir).expanduser() if app.get("output_dir") else None
    output_dir = new_output_dir(anchor_checkpoint(app, paths), requested, "predict")
    try:
        predictor = Predictor.from_checkpoints(paths, configs, settings, app.get("device", "auto"), int(app.get("batch_size", 16)))
    except ValueError as error:
        raise UsageError(str(error)) from None
    rows = predictor.predict_scans(scans, output_dir, bool(app.get("save_probabilities")), report=lambda message: print(f"error: {message}", file=sys.stderr))
    atomic_write(output_dir / "predictions.csv", lambda file: pd.DataFrame(rows).to_csv(file, index=False))
    failed = [row for row in rows if row["status"] != "ok"]
    summary = {
        "checkpoints": [str(path) for path in paths],
        "checkpoint": str(paths[0]),
        "model": cfg.get("model_name"),
        "data": cfg.data.get("name"),
        "overrides": [override for override in overrides if override.split("=")[0] not in OWN_KEYS],
        "threshold": settings.threshold,
        "inference": settings.as_dict(),
        "postprocessing_from": str(Path(app.run_dir) / POSTPROCESSING_FILE) if chosen is not None else None,
        "uncertainty": "predictive entropy of the mean class probabilities, normalised to [0, 1]",
        "scans": len(rows),
        "failed": len(failed),
        "device": str(predictor.device),
        "wall_time_s": time.perf_counter() - started,
        "output_dir": str(output_dir),
    }
    write_summary(output_dir / "predict.json", summary)
    print(f"predicted {len(rows) - len(failed)} of {len(rows)} scans with {len(paths)} checkpoint(s) into {output_dir}")
    return summary


def predict(arguments: list[str]) -> dict[str, Any]:
    """The Python form of the command line: `predict(["ckpt_path=...", "input=..."])`."""
    register_resolvers()
    check_keys(arguments, "predict", OWN_KEYS)
    return run(compose_app("predict", arguments), list(arguments))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def app(cfg: DictConfig) -> int:
    """Hydra app: one prediction run (one job of a sweep); a bad input is one line, exit code 2."""
    try:
        summary = run(cfg, app_overrides())
        if summary["failed"]:
            raise UsageError(f"{summary['failed']} of {summary['scans']} scans failed; see {summary['output_dir']}/predictions.csv")
    except (UsageError, DataError, FileNotFoundError, MissingMandatoryValue) as error:
        if in_sweep():  # one job's bad checkpoint must not stop the others
            log.error("job failed: %s", error)
            return 2
        exit_on_usage_error(str(error))
    return 0


def main() -> None:
    """Check the command line (group options, unknown keys) before Hydra, then run the app."""
    checked_main(app, "predict", OWN_KEYS)


if __name__ == "__main__":
    main()
