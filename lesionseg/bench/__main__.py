"""Benchmarks: `python -m lesionseg.bench models [...]` (model throughput) or `... data [...]`
(data pipeline) or `... recipes [...]` (every paper recipe on its synthetic data). Each subcommand's module is imported only when asked for."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "models": "lesionseg.bench.models",
    "data": "lesionseg.bench.data",
    "overhead": "lesionseg.bench.overhead",
    "recipes": "lesionseg.bench.recipes",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark named by the first argument (default: the command line's)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:
        choices = "|".join(SUBCOMMANDS)
        raise SystemExit(f"usage: python -m lesionseg.bench {{{choices}}} [--help | options]; got: {' '.join(argv)!r}")
    importlib.import_module(SUBCOMMANDS[argv[0]]).main(list(argv[1:]))


if __name__ == "__main__":
    main()
