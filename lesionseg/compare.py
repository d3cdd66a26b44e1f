"""Compare runs in a paper-style table: per-subject test metrics, mean ± std over folds.

    python -m lesionseg.compare <multirun folder or run folders...> [--out DIR]

Every `summary.json` below the given folders is one run (written by `lesionseg.train`). Runs are
grouped by method (model config name, plus the experiment when one is set) and dataset; each figure
is the mean ± sample standard deviation over the group's runs (its folds, n shown), sorted by Dice
within a dataset. Runs whose status is not "ok", or that have no test metrics, are listed apart and
not averaged.

Writes `table.md`, `table.csv` (one row per method), `runs.csv` (one row per run) and
`dice_per_fold.png` into `--out` (default `<first folder>/compare/`), and prints the Markdown table.
A user's files are never written over: when the output folder exists and is not empty, the report
goes into a new timestamped subfolder of it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

METRICS = {"dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall"}
GROUP = ["method", "data"]


class SummaryError(ValueError):
    """Bad compare input: the message is one line naming the folder or file and the problem."""


def find_summaries(folders: Sequence[Path]) -> list[Path]:
    """Every run below each folder, once each; a folder without one is an error.

    A run is a training run's `summary.json`, or a `lesionseg.evaluate` result (`evaluation.json`)
    that does not lie inside a training run's folder: an evaluation saved under its own run
    (`<run>/evaluate/...`, the default) re-scores that run and must not count as another fold, while
    evaluations written elsewhere (e.g. every fold's `last.ckpt` into one folder) are runs to compare.
    """
    found: dict[Path, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise SummaryError(f"{folder}: not a folder")
        trainings = sorted(folder.rglob("summary.json"))
        run_folders = {summary.parent.resolve() for summary in trainings}
        evaluations = [path for path in sorted(folder.rglob("evaluation.json")) if not run_folders.intersection(path.resolve().parents)]
        if not trainings and not evaluations:
            raise SummaryError(f"{folder}: no summary.json or evaluation.json found below this folder")
        for summary in [*trainings, *evaluations]:
            found.setdefault(summary.resolve(), summary)
    return list(found.values())


def read_run(path: Path) -> dict[str, object]:
    """One run's row: method, data, fold, test metrics, size, speed and why it is not averaged (if so)."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SummaryError(f"{path}: unreadable summary ({error})") from error
    if not isinstance(summary, dict) or "status" not in summary or "model" not in summary:
        raise SummaryError(f"{path}: not a run summary (needs 'status' and 'model')")
    experiment = summary.get("experiment")
    test = summary.get("test") or {}
    if summary["status"] != "ok":
        not_averaged = str(summary.get("error") or f"status {summary['status']}").splitlines()[0]
    elif any(test.get(metric) is None for metric in METRICS):
        not_averaged = "no test metrics"
    else:
        not_averaged = ""
    try:
        return {
            "method": f"{summary['model']} ({experiment})" if experiment else str(summary["model"]),
            "data": str(summary.get("data") or ""),
            "fold": _integer(summary.get("fold")),
            "seed": _integer(summary.get("seed")),
            **{metric: _number(test.get(metric)) for metric in METRICS},
            "params": _integer(summary.get("params")),
            "throughput_img_s": _number(summary.get("throughput_img_s")),
            "status": summary["status"],
            "not_averaged": not_averaged,
            "run_dir": str(path.parent),
        }
    except (TypeError, ValueError) as error:
        raise SummaryError(f"{path}: a fold, seed, parameter count or metric is not a number ({error})") from error


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _integer(value: Any) -> int | None:
    return None if value is None else int(value)


def method_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over each method's runs (NaN std for a single run), best Dice first."""
    averaged = [*METRICS, "throughput_img_s"]
    grouped = runs.groupby(GROUP, sort=False)
    table = pd.concat(
        [
            grouped.size().rename("n"),
            grouped[averaged].mean().add_suffix("_mean"),
            grouped[averaged].std(ddof=1).add_suffix("_std"),
            grouped["params"].max(),
        ],
        axis=1,
    ).reset_index()
    statistics = [f"{name}_{statistic}" for name in METRICS for statistic in ("mean", "std")]
    columns = [*GROUP, "n", *statistics, "params", "throughput_img_s_mean", "throughput_img_s_std"]
    return table[columns].sort_values(["data", "dice_mean"], ascending=[True, False], ignore_index=True)


def markdown(table: pd.DataFrame, not_averaged: pd.DataFrame) -> str:
    """The table as Markdown, then the runs left out of it and why."""
    header = ["Method", "Data", "n", *METRICS.values(), "#Params", "Images/s"]
    rows = [
        [
            row["method"],
            row["data"],
            str(row["n"]),
            *(_mean_std(row[f"{metric}_mean"], row[f"{metric}_std"], 3) for metric in METRICS),
            _count(row["params"]),
            _mean_std(row["throughput_img_s_mean"], row["throughput_img_s_std"], 1),
        ]
        for row in table.to_dict("records")
    ]
    lines = [
        "Test metrics per subject in 3D, averaged over a fold's test subjects; mean ± std over n folds.",
        "",
        *_markdown_rows([header, ["---"] * len(header), *rows]),
    ]
    if not not_averaged.empty:
        left_out = [[row["method"], row["data"], _text(row["fold"]), row["not_averaged"], row["run_dir"]] for row in not_averaged.to_dict("records")]
        lines += ["", "Not averaged (failed or without test metrics):", ""]
        lines += _markdown_rows([["Method", "Data", "Fold", "Reason", "Run"], ["---"] * 5, *left_out])
    return "\n".join(lines) + "\n"


def _markdown_rows(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def _mean_std(mean: float, std: float, decimals: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{decimals}f}" if math.isnan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _count(value: int) -> str:
    if pd.isna(value):
        return "–"
    for size, suffix in ((1e6, "M"), (1e3, "K")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


def _text(value: object) -> str:
    return "–" if pd.isna(value) else str(value)


def plot_dice_per_fold(runs: pd.DataFrame, path: Path) -> None:
    """Bars of test Dice per fold, one colour per method (and dataset, when there are several)."""
    figure = Figure(figsize=(6.4, 4.0))
    axes = figure.subplots()
    groups = list(runs.groupby(GROUP, sort=True))
    several_datasets = runs["data"].nunique() > 1
    width = 0.8 / max(len(groups), 1)
    for position, ((method, data), group) in enumerate(groups):
        offset = (position - (len(groups) - 1) / 2) * width
        label = f"{method} · {data}" if several_datasets else method
        axes.bar(group["fold"].astype(float) + offset, group["dice"], width=width, label=label)
    axes.set(xlabel="fold", ylabel="test Dice (mean over subjects)", ylim=(0, 1), title="Dice per fold")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if groups:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.savefig(path, dpi=120, bbox_inches="tight")


def fresh_output_dir(out: Path) -> Path:
    """`out` when it is new or empty, else a new timestamped subfolder of it."""
    if out.exists() and not out.is_dir():
        raise SummaryError(f"{out}: output path exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, attempt = out / stamp, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            attempt += 1
            candidate = out / f"{stamp}-{attempt}"


def compare(folders: Sequence[Path], out: Path | None = None) -> tuple[Path, str]:
    """Write the report for the runs below `folders`; return its folder and the Markdown table."""
    runs = pd.DataFrame([read_run(path) for path in find_summaries(folders)])
    runs = runs.astype({"fold": "Int64", "seed": "Int64", "params": "Int64"})  # integers with gaps
    averaged = runs[runs["not_averaged"] == ""]
    table = method_table(averaged)
    text = markdown(table, runs[runs["not_averaged"] != ""])
    report_dir = fresh_output_dir(out if out is not None else folders[0] / "compare")
    (report_dir / "table.md").write_text(text, encoding="utf-8")
    table.to_csv(report_dir / "table.csv", index=False, float_format="%.6g")
    runs.to_csv(report_dir / "runs.csv", index=False, float_format="%.6g")
    plot_dice_per_fold(averaged, report_dir / "dice_per_fold.png")
    return report_dir, text


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (2 on bad input, after a one-line error)."""
    parser = argparse.ArgumentParser(prog="python -m lesionseg.compare", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="multirun folder(s) or run folder(s)")
    parser.add_argument("--out", type=Path, help="report folder (default: <first folder>/compare)")
    args = parser.parse_args(argv)
    try:
        report_dir, text = compare(args.folders, args.out)
    except SummaryError as error:
        print(f"lesionseg.compare: error: {error}", file=sys.stderr)
        return 2
    print(text, end="")
    print(f"\nReport written to {report_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
