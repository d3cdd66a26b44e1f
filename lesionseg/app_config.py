"""The config of the apps that read checkpoints (`evaluate`, `predict`): the checkpoint's, plus the command line.

`conf/evaluate.yaml` and `conf/predict.yaml` compose the whole training tree (`defaults: [train]`)
plus the app's own keys, so Hydra knows every key and group: `--help`, `--cfg job`, `-m` sweeps
and group overrides work as in `train`. The run itself is the checkpoint's stored config (the exact
record of the run), in struct mode, with only what the command line names changed:

- `key=value` sets that key of the stored config; a key the stored config does not have is a
  one-line error naming it and the closest known key (exit 2). `+key=value` adds one.
- `threshold=x` (the historical top-level key) also sets `inference.threshold`.
- `data=<option>` swaps the dataset (layout, root, loaders) for that option's defaults, but keeps
  the checkpoint's model-facing keys (`data.preprocess`, `in_channels`, `num_classes`, `grid`) unless
  they are overridden too: the network sees what it was trained on. `trainer=<option>` likewise
  replaces the trainer node (evaluate's accelerator and precision). Other groups (model, loss,
  optimizer, ...) cannot change a trained checkpoint and are refused.
- `inference.*` keys added since the checkpoint was written take their current defaults.

`check_keys` runs before Hydra (Hydra's own message for an unknown key is several lines and exit
code 1).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict

from lesionseg.config import CONF_DIR, UsageError, check_overrides, config_groups, exit_on_usage_error, parse_overrides, register_resolvers

# Groups whose node an app may replace, and the data keys a replaced `data` node keeps from the checkpoint.
SWAPPABLE_GROUPS = ("data", "trainer")
MODEL_FACING_DATA_KEYS = ("preprocess", "in_channels", "num_classes", "grid")


def _closest(key: str, cfg: DictConfig) -> str:
    """' (did you mean X?)' for the known key closest to dotted `key`, or ''."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    known = [str(name) for name in node.keys()]
    close = difflib.get_close_matches(leaf, known, n=1)
    return f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""


def _is_group(override: Override, groups: Sequence[str]) -> bool:
    return override.key_or_group in groups and override.package is None


def _first_value(override: Override) -> str:
    """The value of an override, or the first value of a sweep."""
    if override.is_sweep_override():
        return next(iter(override.sweep_string_iterator()))
    return override.get_value_element_as_str()


def check_keys(arguments: Sequence[str], config_name: str, own_keys: Sequence[str]) -> None:
    """Before Hydra: UsageError for an unknown group option or key, naming the closest known key."""
    check_overrides(arguments)
    words = [word for word in arguments if not word.startswith("-")]
    overrides = parse_overrides(words)
    groups = config_groups()
    group_choices = [f"{o.key_or_group}={_first_value(o)}" for o in overrides if _is_group(o, groups) and not o.is_delete()]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            base = compose(config_name, overrides=group_choices)
    finally:
        GlobalHydra.instance().clear()
    for override in overrides:
        key = override.key_or_group
        if _is_group(override, groups) or override.is_add() or key.split(".")[0].split("/")[0] == "hydra" or key in own_keys:
            continue
        if OmegaConf.select(base, key, default=_MISSING, throw_on_resolution_failure=False) is _MISSING:
            raise UsageError(f"unknown key '{key}'{_closest(key, base)}")


def checked_main(app: Callable[[], Any], config_name: str, own_keys: Sequence[str]) -> None:
    """An app's command line: check group options and keys before Hydra (one line, exit 2), then run `app`."""
    register_resolvers()
    try:
        check_keys(sys.argv[1:], config_name, own_keys)
    except UsageError as error:
        exit_on_usage_error(str(error))
    app()


_MISSING = object()


def checkpoint_config(stored: DictConfig, composed: DictConfig, overrides: Sequence[str], own_keys: Sequence[str], source: str) -> DictConfig:
    """The stored config with the command line's overrides applied (see the module docstring), struct mode on."""
    cfg = OmegaConf.create(OmegaConf.to_container(stored, resolve=True))
    assert isinstance(cfg, DictConfig)
    with open_dict(cfg):
        for key, value in composed.inference.items():  # keys newer than the checkpoint
            if key not in cfg.inference and key != "threshold":
                cfg.inference[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if "threshold" not in cfg.inference:
            cfg.inference.threshold = cfg.get("threshold", 0.5)
    OmegaConf.set_struct(cfg, True)
    groups = config_groups()
    parsed = parse_overrides(list(overrides))
    for override in parsed:
        key = override.key_or_group
        if not _is_group(override, groups) or key.split("/")[0] == "hydra":
            continue
        if key not in SWAPPABLE_GROUPS:
            raise UsageError(f"'{override.input_line}': a trained checkpoint's {key} cannot change (only {', '.join(SWAPPABLE_GROUPS)} can)")
        replacement = OmegaConf.to_container(composed[key], resolve=True)
        assert isinstance(replacement, dict)
        if key == "data":
            for kept in MODEL_FACING_DATA_KEYS:
                if kept in cfg.data:
                    replacement[kept] = OmegaConf.to_container(cfg.data[kept], resolve=True) if OmegaConf.is_config(cfg.data[kept]) else cfg.data[kept]
        with open_dict(cfg):
            cfg[key] = replacement
    for override in parsed:
        key = override.key_or_group
        if _is_group(override, groups) or key.split(".")[0].split("/")[0] == "hydra" or key in own_keys:
            continue
        if override.is_delete():
            raise UsageError(f"'{override.input_line}': deleting a key of a checkpoint's config is not supported")
        value = _plain(OmegaConf.select(composed, key))
        try:
            if override.is_add():
                with open_dict(cfg):
                    OmegaConf.update(cfg, key, value, merge=False, force_add=True)
            else:
                if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
                    raise UsageError(f"unknown key '{key}' in the config of {source}{_closest(key, cfg)}")
                OmegaConf.update(cfg, key, value, merge=False)
        except UsageError:
            raise
        except Exception as error:
            raise UsageError(f"'{override.input_line}': {type(error).__name__}: {error}".splitlines()[0]) from None
        if key == "threshold":
            cfg.inference.threshold = value
    return cfg


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def app_overrides() -> list[str]:
    """The command line's overrides of this Hydra job (a sweep job's own values)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def compose_app(config_name: str, arguments: Sequence[str]) -> DictConfig:
    """The app's composed config for `arguments` outside a Hydra run (the Python API and tests)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name, overrides=list(arguments))
    finally:
        GlobalHydra.instance().clear()


def in_sweep() -> bool:
    """True inside a job of a Hydra multirun (`-m`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
