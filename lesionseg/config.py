"""Hydra plumbing shared by the entry points: config location, resolvers, early override checks.

Hydra reports an unknown group option as a multi-line message with a stack-trace hint; a
researcher typing `model=xnett` should get one line that lists what exists. `check_overrides`
looks at the command line before Hydra does and exits with such a line.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS_WITH_OPTIONS = ("model", "data", "augment", "optimizer", "scheduler", "loss", "trainer", "logger", "callbacks", "paths", "experiment", "debug")
OVERRIDE = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<key>[\w./@-]+)=(?P<value>.*)$")


class UsageError(ValueError):
    """A wrong command line or setting: reported as one line, exit code 2."""


def wandb_offline() -> bool:
    """wandb runs offline unless the user exported WANDB_MODE=online (never hang without network)."""
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)


def available_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Option names of a config group (the yaml files in conf/<group>/)."""
    return sorted(path.stem for path in (conf_dir / group).glob("*.yaml"))


def sweep_values(value: str) -> list[str]:
    """The option names a (possibly swept) override value names: `a`, `a,b` or `choice(a,b)`."""
    match = re.fullmatch(r"\s*choice\((.*)\)\s*", value)
    inner = match.group(1) if match else value
    return [item.strip().strip("'\"") for item in inner.split(",") if item.strip()]


def check_overrides(arguments: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Raise UsageError for an override naming a config-group option that does not exist."""
    for argument in arguments:
        match = OVERRIDE.match(argument)
        if not match or match.group("prefix") == "~":
            continue
        group = match.group("key").split("@")[0]
        if group not in GROUPS_WITH_OPTIONS:
            continue
        options = available_options(group, conf_dir)
        for value in sweep_values(match.group("value")):
            if value in ("null", "none") and group in ("experiment", "debug", "augment", "scheduler", "logger"):
                continue
            if value not in options:
                raise UsageError(f"unknown {group} '{value}' in '{argument}'; available: {', '.join(options)}")


def exit_on_usage_error(message: str) -> None:
    """Print one line to stderr and exit 2, the convention for a wrong command line."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def resolve_checkpoint(ckpt_path: str | None, resume_dir: str | None, output_dir: Path) -> str | None:
    """Turn `ckpt_path` (None, 'last', a run folder or a file) into an existing checkpoint file.

    `last` means `<resume_dir or this run>/checkpoints/last.ckpt`; a run folder means its
    `checkpoints/last.ckpt`. A path that does not exist is a UsageError naming it.
    """
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        folder = Path(resume_dir) if resume_dir else output_dir
        candidate = folder / "checkpoints" / "last.ckpt"
        if not candidate.is_file():
            raise UsageError(f"ckpt_path=last: no checkpoint at {candidate} (set resume_dir=<run folder>)")
        return str(candidate)
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise UsageError(f"ckpt_path: checkpoint file not found: {path}")
    return str(path)
