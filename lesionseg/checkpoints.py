"""Checkpoints as data: how they are written, and how the entry points read and trust them.

A checkpoint written by `lesionseg.train` carries its resolved run config (`lesionseg_config`), so
`lesionseg.evaluate` and `lesionseg.predict` rebuild the exact model, preprocessing and inference
settings it was trained with, and only what the user overrides on the command line changes.

Trust model (a checkpoint is shared data, never code):

- Every read is `torch.load(weights_only=True)`: tensors and plain containers only; a pickled object
  (code) is refused with one line naming the file, before anything of it runs. Lightning's resume
  path reads through `SafeCheckpointIO`, which forces the same.
- The stored config may only name `_target_`s that the project's own `conf/` tree names, classes
  of the modules those targets come from (another Lightning callback, torch optimizer, albumentations
  transform, as a command line may name), or torch-module classes of `lesionseg.models.*` /
  `lesionseg.losses` (networks, losses); any other target (e.g.
  `pathlib.Path.write_text`, or a `lesionseg.*` function that writes files) and any unresolved
  interpolation are refused with one line naming the key and the target, before anything is
  instantiated. The stored config is checked rather than re-composed from `conf/`: it is the exact
  record of the run, and re-composing would silently pick up defaults changed since training.
- Every checkpoint carries a SHA-256 of its weights and config (`lesionseg_sha256`), written by
  `SafeCheckpointIO` at save time and checked at load: a modified or damaged file is reported and
  not used. The hash guards against damage and accidental edits, not against a forger (who can
  recompute it); the two checks above are what make a forged file harmless.
- Files are written atomically (`lesionseg.outputs.atomic_save`): a kill leaves the old checkpoint
  or the new one. `LastEpochCheckpoint` keeps `last.ckpt` at the last completed epoch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import pickle
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from lesionseg.config import CONF_DIR, UsageError
from lesionseg.outputs import atomic_save, claim_output_dir

CONFIG_KEY = "lesionseg_config"
HASH_KEY = "lesionseg_sha256"
# Hydra's own launchers and sweepers, allowed under a stored `hydra` node only (configs composed in tests carry it).
HYDRA_PLUGIN_PREFIXES = ("hydra._internal.core_plugins.", "hydra_plugins.")


def content_hash(state_dict: Mapping[str, Any], config: Any) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes, and of the config as canonical JSON."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        digest.update(name.encode("utf-8", "surrogatepass"))
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"|{value.dtype}|{tuple(value.shape)}|".encode())
            digest.update(tensor.view(torch.uint8).numpy().data)
        else:
            digest.update(f"|{value!r}|".encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


@functools.cache
def project_targets(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """Every `_target_` named anywhere in the project's config tree (`conf/**/*.yaml`)."""
    targets: set[str] = set()
    for path in conf_dir.rglob("*.yaml"):
        targets.update(value for key, value in _items(yaml.safe_load(path.read_text()), "") if key.rsplit(".", 1)[-1] == "_target_")
    return frozenset(targets)


def _items(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested dict/list."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _items(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _items(value, f"{prefix}[{index}]")
    else:
        yield prefix, node


def _is_allowed_class(target: str) -> bool:
    """A class from a module the project's config tree already draws targets from (another Lightning
    callback, torch optimizer or albumentations transform, as a run may name on its command line), or a
    torch-module class of `lesionseg.models.*` / `lesionseg.losses` (a network or loss).

    Functions must be named by `conf/` itself; no other module is imported because a file names it
    (an entry point's `__main__` must never run).
    """
    module_name, _, attribute = target.rpartition(".")
    families = {name.rpartition(".")[0] for name in project_targets()}
    network = module_name == "lesionseg.losses" or module_name.startswith("lesionseg.models.")
    if "__main__" in module_name or not (module_name in families or network) or attribute.startswith("_"):
        return False
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return False
    return isinstance(value, type) and (module_name in families or issubclass(value, torch.nn.Module))


def check_config_targets(config: Any, source: Path | str) -> None:
    """UsageError naming the key and target when a stored config names a target outside the project.

    Also refused: an unresolved interpolation (`${...}`), which would run a resolver on load.
    """
    allowed = project_targets()
    for key, value in _items(config, ""):
        if key.rsplit(".", 1)[-1] == "_target_":
            hydra_own = key.startswith("hydra.") and isinstance(value, str) and value.startswith(HYDRA_PLUGIN_PREFIXES)
            if not isinstance(value, str) or not (value in allowed or hydra_own or _is_allowed_class(value)):
                raise UsageError(
                    f"{source}: refused: stored config key {key} names target {value!r}, which the project's conf/ tree does not name (checkpoints are data)"
                )
        elif isinstance(value, str) and "${" in value:
            raise UsageError(f"{source}: refused: stored config key {key} holds an interpolation {value!r} (a checkpoint's config is stored resolved)")


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`; UsageError naming the file when missing, damaged or carrying objects."""
    if not path.is_file():
        raise UsageError(f"ckpt_path: checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported global" in line), lines[-1] if lines else "")
        raise UsageError(f"{path}: refused: the checkpoint holds pickled Python objects, not only weights and plain data ({reason[:200]})") from None
    except Exception as error:  # torch raises many types for a damaged file
        text = " ".join(str(error).split())[:200]
        raise UsageError(f"{path}: not a readable checkpoint ({type(error).__name__}: {text})") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"{path}: not a lesionseg checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`, read as data and verified (config targets, content hash); UsageError otherwise."""
    checkpoint = read_checkpoint_file(path)
    if CONFIG_KEY not in checkpoint or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise UsageError(f"{path}: checkpoint carries no lesionseg config (was it written by lesionseg.train?)")
    check_config_targets(checkpoint[CONFIG_KEY], path)
    recorded = checkpoint.get(HASH_KEY)
    if recorded is None:
        raise UsageError(f"{path}: checkpoint carries no content hash ({HASH_KEY}); it was not written by this lesionseg version")
    if content_hash(checkpoint["state_dict"], checkpoint[CONFIG_KEY]) != recorded:
        raise UsageError(f"{path}: content hash mismatch: the weights or config were modified after the checkpoint was written; not used")
    return checkpoint


def load_checkpoint(path: Path) -> tuple[dict[str, Any], DictConfig]:
    """The verified checkpoint and the run config it carries; UsageError naming the file otherwise."""
    checkpoint = verify_checkpoint(Path(path))
    return checkpoint, OmegaConf.create(checkpoint[CONFIG_KEY])


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, made safe: atomic writes with a content hash; weights-only, verified reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if CONFIG_KEY in checkpoint and "state_dict" in checkpoint:
            checkpoint[HASH_KEY] = content_hash(checkpoint["state_dict"], checkpoint[CONFIG_KEY])
        atomic_save(Path(path), lambda temporary: torch.save(checkpoint, temporary))

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        """A verified checkpoint (on the CPU: Lightning moves the states where they belong).

        `ddp_spawn` hands rank 0's trained weights back to the main process as a bare state dict
        (`.temp.ckpt`, name -> tensor, no config): read weights-only, it carries neither code nor
        targets, so it is returned as it is; anything else must pass `verify_checkpoint`.
        """
        checkpoint = read_checkpoint_file(Path(path))
        if CONFIG_KEY not in checkpoint and checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
            return checkpoint
        return verify_checkpoint(Path(path))


class LastEpochCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` always holds the last completed epoch.

    Lightning 2.6 rewrites `last.ckpt` only when it also saved a top-k checkpoint at that step, so
    with `save_top_k: 1` a finished run's `last.ckpt` held the best epoch, not the last, and a resume
    silently redid epochs. Here `last.ckpt` is written at every epoch end that saved no top-k file.
    """

    _last_step_saved_as_last = -1

    def _save_last_checkpoint(self, trainer: Any, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_saved_as_last = trainer.global_step

    def _save_last_if_missed(self, trainer: Any) -> None:
        if (
            self.save_last
            and not trainer.fast_dev_run
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and self._last_step_saved_as_last != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)


def new_output_dir(checkpoint_path: Path, requested: Path | None, kind: str) -> Path:
    """A folder that is new or empty (default `<run folder>/<kind>/<timestamp>/`); never a user's full one."""
    if requested is not None:
        return claim_output_dir(requested)
    return claim_output_dir(checkpoint_path.resolve().parent.parent / kind / time.strftime("%Y-%m-%d_%H-%M-%S"), unique=True)
