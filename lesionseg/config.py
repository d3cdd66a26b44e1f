"""Hydra plumbing shared by the entry points: config location, resolvers, early override checks.

Hydra reports an unknown group option as a multi-line message with a stack-trace hint; a
researcher typing `model=xnett` should get one line that lists what exists. `check_overrides`
parses the command line with Hydra's own override grammar (so sweeps such as `glob(unext*)`,
`shuffle(...)`, `choice(...)`, `range(...)` and `tag(...)` work), takes the config groups from the
config folders, and exits with such a line. This module imports no torch: the check answers in a
fraction of a second, before the entry point loads the heavy libraries.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf


def find_conf_dir() -> Path:
    """The config tree: `lesionseg/conf` inside an installed wheel, else the repository's top-level `conf/`."""
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if (packaged / "train.yaml").is_file() else Path(__file__).resolve().parent.parent / "conf"


CONF_DIR = find_conf_dir()
# Groups whose options also come from Hydra's plugins: Hydra checks those itself.
HYDRA_OWNED_PREFIX = "hydra"


class UsageError(ValueError):
    """A wrong command line or setting: reported as one line, exit code 2."""


# Optional extras: the module an import error names -> the extra that installs it.
EXTRAS = {
    "wandb": "wandb",
    "tensorboard": "tensorboard",
    "tensorboardX": "tensorboard",
    "optuna": "sweeps",
    "hydra_plugins.hydra_optuna_sweeper": "sweeps",
    "hydra_plugins.hydra_submitit_launcher": "slurm",
    "submitit": "slurm",
}


def missing_extra(error: BaseException) -> str | None:
    """One line naming the extra to install when `error` is a missing optional module, else None.

    Looks at the module name (an import) and the message (Lightning's loggers report a missing
    package as a requirement not met)."""
    if not isinstance(error, ImportError):
        return None
    name, text = error.name or "", str(error)
    for module, extra in EXTRAS.items():
        if name == module or name.startswith(module + ".") or f"'{module}" in text or f"`{module}" in text:
            return f"{module} is not installed: pip install 'lesionseg[{extra}]'"
    return None


def wandb_offline() -> bool:
    """wandb runs offline unless the user exported WANDB_MODE=online (never hang without network)."""
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)


def config_groups(conf_dir: Path = CONF_DIR) -> list[str]:
    """Every config group of the tree: each folder holding option files, named by its relative path."""
    if not conf_dir.is_dir():
        return []
    folders = {path.parent.relative_to(conf_dir).as_posix() for path in conf_dir.rglob("*.yaml") if path.parent != conf_dir}
    return sorted(folders)


def available_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Option names of a config group (the yaml files in conf/<group>/)."""
    return sorted(path.stem for path in (conf_dir / group).glob("*.yaml"))


def group_values(override: Override, options: list[str]) -> list[str]:
    """The option names a group override selects: one value, a sweep's values, or a glob's matches."""
    value = override.value()
    if isinstance(value, Glob):
        return value.filter(options)
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [] if value is None else [str(value)]


def parse_overrides(arguments: Sequence[str]) -> list[Override]:
    """The command line's overrides parsed by Hydra's grammar; a malformed one is a UsageError naming it."""
    parser = OverridesParser.create()
    parsed = []
    for word in arguments:
        if word.startswith("-"):
            continue
        try:
            parsed.extend(parser.parse_overrides([word]))
        except OverrideParseException as error:
            reason = next((line for line in str(error).splitlines() if line and not line.startswith(("Error parsing", "See "))), str(error))
            raise UsageError(f"cannot parse override '{word}': {reason} (grammar: https://hydra.cc/docs/advanced/override_grammar/basic)") from None
    return parsed


# Hydra's flags that take a value: the word after them is not an override.
FLAGS_WITH_VALUE = (
    *("--cfg", "-c", "--package", "-p", "--info", "-i"),
    *("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"),
)


def check_overrides(arguments: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Raise UsageError for an override naming a config-group option that does not exist.

    Flags are left to Hydra; a `--config-dir` the user adds contributes its groups and options.
    """
    words = [word for index, word in enumerate(arguments) if not (index > 0 and arguments[index - 1] in FLAGS_WITH_VALUE)]
    extra_dirs = [Path(arguments[index + 1]) for index, word in enumerate(arguments[:-1]) if word in ("--config-dir", "-cd")]
    conf_dirs = [conf_dir, *extra_dirs]
    groups = {group for folder in conf_dirs for group in config_groups(folder)}
    for override in parse_overrides(words):
        group = override.key_or_group
        if override.is_delete() or group not in groups or group.split("/")[0] == HYDRA_OWNED_PREFIX:
            continue
        options = sorted({option for folder in conf_dirs for option in available_options(group, folder)})
        selected = group_values(override, options)
        if isinstance(override.value(), Glob) and not selected:
            raise UsageError(f"'{override.input_line}' matches no {group}; available: {', '.join(options)}")
        for value in selected:
            if value not in options:
                raise UsageError(f"unknown {group} '{value}' in '{override.input_line}'; available: {', '.join(options)}")


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
