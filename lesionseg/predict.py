"""`python -m lesionseg.predict ckpt_path=<ckpt> input=<file or folder> [key=value ...]`: masks for new scans.

The checkpoint carries its run config, so every scan goes through exactly the training pipeline:
the same decoding, validation (NaN/inf, shape), preprocessing (crop, pad/resize, normalisation),
grid inference, flip TTA and component clean-up (`inference.*`, `threshold`, overridable here).
Masks are then mapped back to each scan's own geometry (the crop put back in place, pad/resize
undone) and written in its own format: `<subject>_mask.nii.gz` with the scan's affine and header for a
NIfTI volume, `<stem>_mask.png` per slice for 2D files (see `lesionseg.data.scans`).

Without `input=`, the scans are the cases of the checkpoint's dataset layout under `data.root`
(default `cases=unlabelled`, e.g. ATLAS R2.0 `Testing/`; `cases=all` predicts every case).

Own keys: `ckpt_path` (required), `input`, `cases`, `output_dir` (new or empty; default
`<run folder>/predict/<timestamp>/`), `save_probabilities` (false; true adds
`<subject>_probabilities.npz`), `batch_size` (16 slices), `device` (auto | cpu | cuda). Everything
else is a config override (e.g. `inference.tta_flips=[[3]]`, `inference.min_size=50`).

Writes `predictions.csv` (per scan: files, slices, lesion voxels, volume in ml where the scan has
voxel spacing, 3D connected components, classifier probability) and `predict.json`. A scan that
cannot be read is reported on one line naming the file, listed as failed, and the others are
still predicted; the exit code is then non-zero.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from scipy import ndimage
from tqdm.auto import tqdm

from lesionseg.checkpoints import (
    load_checkpoint,
    merged_config,
    new_output_dir,
    parse_key_values,
    restore_module,
)
from lesionseg.config import UsageError, exit_on_usage_error, register_resolvers
from lesionseg.data.cases import CaseArrays, DataError
from lesionseg.data.preprocess import Preprocess
from lesionseg.data.scans import (
    Scan,
    input_scans,
    layout_scans,
    voxel_volume_ml,
    write_prediction,
    write_probabilities,
)
from lesionseg.data.validate import checked
from lesionseg.module import SegmentationModule
from lesionseg.summary import write_summary

OWN_KEYS = ("ckpt_path", "input", "cases", "output_dir", "save_probabilities", "batch_size", "device")
CASE_CHOICES = ("unlabelled", "all")


def parse_flag(key: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise UsageError(f"{key}={value}: use true or false")


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"device={name}: use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda: no CUDA device is available")
    return torch.device(name)


def find_scans(own: dict[str, str], cfg: Any) -> list[Scan]:
    """The scans named by `input=`, else the checkpoint's dataset cases under `data.root`."""
    if own.get("input"):
        return input_scans(Path(own["input"]), cfg.data.in_channels)
    which = own.get("cases", "unlabelled")
    if which not in CASE_CHOICES:
        raise UsageError(f"cases={which}: use one of {', '.join(CASE_CHOICES)}")
    datamodule = hydra.utils.instantiate(cfg.data, augment=None)
    cases = datamodule.cases() if which == "all" else datamodule.predict_cases()
    if not cases:
        raise UsageError(f"data.root={datamodule.root}: no unlabelled cases to predict; pass cases=all or input=<scans>")
    return layout_scans(cases, datamodule.layout)


@torch.no_grad()
def predict_slices(module: SegmentationModule, image: np.ndarray, batch_size: int, device: torch.device) -> dict[str, np.ndarray]:
    """Model-space mask (Z, H', W'), probabilities (Z, K, H', W') and per-slice classifier probability."""
    outputs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(image), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(image[start : start + batch_size])).to(device)
        slices = torch.arange(start, start + len(batch))
        result = module.predict_step({"image": batch, "subject": [], "slice_index": slices}, 0)
        for key in ("mask", "probabilities", "cls_probability"):
            if key in result:
                outputs.setdefault(key, []).append(result[key].float().cpu())
    return {key: torch.cat(values).numpy() for key, values in outputs.items()}


def scan_image(scan: Scan, in_channels: int) -> np.ndarray:
    """The scan decoded and its image validated as training does it: (Z, in_channels, H, W) float32.

    A labelled case's mask is not needed to predict, so it is neither checked nor kept.
    """
    decoded = scan.decode()
    arrays, _ = checked(replace(scan.case, mask=()), CaseArrays(image=decoded.image, mask=None))
    image = arrays.image
    if image.shape[1] == 1 < in_channels:
        image = np.repeat(image, in_channels, axis=1)
    if image.shape[1] != in_channels:
        raise DataError(f"{scan.case.image[0]}: {image.shape[1]} channels, but the model takes {in_channels}")
    return image


def predict_scan(scan: Scan, module: SegmentationModule, preprocess: Preprocess, in_channels: int, settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Predict one scan, write its mask (and probabilities); return its predictions.csv row."""
    image = scan_image(scan, in_channels)
    size = tuple(image.shape[-2:])
    model_space, _ = preprocess(image, None)
    output = predict_slices(module, model_space, settings["batch_size"], settings["device"])
    mask = preprocess.restore(output["mask"].astype(np.uint8), size)
    mask_files = write_prediction(scan, mask, folder, binary=module.num_classes == 1)
    if settings["save_probabilities"]:
        probabilities = preprocess.restore(output["probabilities"].astype(np.float32), size, cv2.INTER_LINEAR)
        write_probabilities(scan, probabilities, folder)
    lesion = mask > 0
    voxel_ml = voxel_volume_ml(scan)
    row = {
        "subject": scan.case.subject,
        "status": "ok",
        "source": str(scan.case.image[0]),
        "slices": int(len(mask)),
        "mask": str(mask_files[0] if len(mask_files) == 1 else mask_files[0].parent),
        "lesion_voxels": int(lesion.sum()),
        "lesion_ml": None if voxel_ml is None else float(lesion.sum()) * voxel_ml,
        "components": int(ndimage.label(lesion)[1]),
    }
    if "cls_probability" in output:
        row["cls_probability_max"] = float(output["cls_probability"].max())
    return row


def predict(arguments: Sequence[str]) -> dict[str, Any]:
    """Predict every scan; write masks, predictions.csv and predict.json; return the summary."""
    started = time.perf_counter()
    own, overrides = parse_key_values(arguments, OWN_KEYS)
    if not own.get("ckpt_path"):
        raise UsageError("ckpt_path=<checkpoint file> is required")
    if own.get("input") and own.get("cases"):
        raise UsageError("give input=<scans> or cases=unlabelled|all (with data.root), not both")
    checkpoint_path = Path(own["ckpt_path"]).expanduser()
    checkpoint, cfg = load_checkpoint(checkpoint_path)
    cfg = merged_config(cfg, overrides)
    try:
        batch_size = int(own.get("batch_size", 16))
    except ValueError as error:
        raise UsageError(f"batch_size={own['batch_size']}: not an integer") from error
    settings = {
        "batch_size": max(batch_size, 1),
        "device": choose_device(own.get("device", "auto")),
        "save_probabilities": parse_flag("save_probabilities", own.get("save_probabilities", "false")),
    }
    scans = find_scans(own, cfg)
    output_dir = new_output_dir(checkpoint_path, Path(own["output_dir"]) if own.get("output_dir") else None, "predict")
    module = restore_module(checkpoint, cfg, None).eval().to(settings["device"])
    preprocess = Preprocess.from_config(cfg.data.preprocess)

    rows = []
    for scan in tqdm(scans, desc="predict", unit="scan", disable=None):
        try:
            rows.append(predict_scan(scan, module, preprocess, cfg.data.in_channels, settings, output_dir))
        except DataError as error:
            print(f"error: {error}", file=sys.stderr)
            rows.append({"subject": scan.case.subject, "status": f"failed: {error}", "source": str(scan.case.image[0])})
    pd.DataFrame(rows).to_csv(output_dir / "predictions.csv", index=False)
    failed = [row for row in rows if row["status"] != "ok"]
    summary = {
        "checkpoint": str(checkpoint_path),
        "model": cfg.get("model_name"),
        "data": cfg.data.get("name"),
        "overrides": list(overrides),
        "threshold": cfg.threshold,
        "inference": OmegaConf.to_container(cfg.inference, resolve=True),
        "scans": len(rows),
        "failed": len(failed),
        "device": str(settings["device"]),
        "wall_time_s": time.perf_counter() - started,
        "output_dir": str(output_dir),
    }
    write_summary(output_dir / "predict.json", summary)
    print(f"predicted {len(rows) - len(failed)} of {len(rows)} scans into {output_dir}")
    return summary


def main() -> None:
    register_resolvers()
    try:
        summary = predict(sys.argv[1:])
    except (UsageError, DataError, FileNotFoundError) as error:
        exit_on_usage_error(str(error))
    if summary["failed"]:
        exit_on_usage_error(f"{summary['failed']} of {summary['scans']} scans failed; see {summary['output_dir']}/predictions.csv")


if __name__ == "__main__":
    main()
