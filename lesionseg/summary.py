"""`summary.json`: the final numbers of one run, the file `lesionseg.compare` reads.

It holds what a methods table needs (model, data, fold, parameter count, per-subject test metrics,
throughput) and what reproducing the run needs (seed, git commit, checkpoint paths).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from lesionseg.outputs import atomic_write_text


def git_commit(folder: Path) -> str | None:
    """The commit of the source tree (with `-dirty` when it has uncommitted changes), if in git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def plain_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    """Tensors to floats, keeping only keys that start with `prefix`; NaN and inf become None (JSON null)."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if key.startswith(prefix):
            number = float(value.item() if isinstance(value, torch.Tensor) else value)
            out[key] = number if math.isfinite(number) else None
    return out


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """Write atomically: a crash never leaves half a summary for `compare` to choke on."""
    return atomic_write_text(path, json.dumps(summary, indent=2, default=str))


def print_results(summary: dict[str, Any], console: Console | None = None) -> None:
    """The final results table: per-subject test metrics, best validation Dice, speed."""
    table = Table(title=f"{summary['model']} on {summary['data']} (fold {summary['fold']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in (summary.get("test") or {}).items():
        if not key.endswith("_std") and value is not None:
            std = summary["test"].get(f"{key}_std")
            table.add_row(f"test {key} (per subject)", f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
    best = summary.get("best_val") or {}
    metric = summary.get("optimized_metric")
    if best.get(metric) is not None:
        epoch = f" (epoch {int(best['epoch'])})" if best.get("epoch") is not None else ""
        table.add_row(f"best {metric}{epoch}", f"{best[metric]:.4f}")
    table.add_row("parameters", f"{summary['params']:,}")
    if summary.get("throughput_img_s"):
        table.add_row("train images/s", f"{summary['throughput_img_s']:.1f}")
    table.add_row("wall time (s)", f"{summary['wall_time_s']:.1f}")
    table.add_row("run folder", str(summary["run_dir"]))
    (console or Console()).print(table)
