"""Console scripts (`lesionseg-train`, `lesionseg-evaluate`, ...): check the command line, then run.

Each script checks its overrides against the config tree with Hydra's own grammar before the
entry point's module (and with it torch, Lightning and MONAI) is imported, so a typo such as
`lesionseg-train model=xnett` is answered with one line in well under a second. A missing optional
extra (wandb, sweeps, slurm) is named in one line too.
"""

from __future__ import annotations

import importlib
import sys

from lesionseg.config import UsageError, check_overrides, exit_on_usage_error, missing_extra


def run_app(module_name: str, checked: bool = True) -> None:
    """Check `sys.argv` (Hydra apps), then import `module_name` and call its `main()`."""
    if checked:
        try:
            check_overrides(sys.argv[1:])
        except UsageError as error:
            exit_on_usage_error(str(error))
    try:
        main = importlib.import_module(module_name).main
        result = main()
    except ModuleNotFoundError as error:
        message = missing_extra(error)
        if message is None:
            raise
        exit_on_usage_error(message)
    if isinstance(result, int) and not isinstance(result, bool):
        raise SystemExit(result)


def train() -> None:
    """`lesionseg-train`: `python -m lesionseg.train`."""
    run_app("lesionseg.train")


def evaluate() -> None:
    """`lesionseg-evaluate`: `python -m lesionseg.evaluate`."""
    run_app("lesionseg.evaluate")


def predict() -> None:
    """`lesionseg-predict`: `python -m lesionseg.predict`."""
    run_app("lesionseg.predict")


def score() -> None:
    """`lesionseg-score`: `python -m lesionseg.score`."""
    run_app("lesionseg.score")


def inspect() -> None:
    """`lesionseg-inspect`: `python -m lesionseg.inspect`."""
    run_app("lesionseg.inspect")


def explain() -> None:
    """`lesionseg-explain`: `python -m lesionseg.explain`."""
    run_app("lesionseg.explain")


def postprocess_select() -> None:
    """`lesionseg-postprocess-select`: `python -m lesionseg.postprocess_select` (a folder, not overrides)."""
    run_app("lesionseg.postprocess_select", checked=False)


def compare() -> None:
    """`lesionseg-compare`: `python -m lesionseg.compare` (paths, not overrides)."""
    run_app("lesionseg.compare", checked=False)


def models() -> None:
    """`lesionseg-models`: `python -m lesionseg.models`."""
    run_app("lesionseg.models.__main__", checked=False)


def bench() -> None:
    """`lesionseg-bench`: `python -m lesionseg.bench` (its own arguments)."""
    run_app("lesionseg.bench.__main__", checked=False)
