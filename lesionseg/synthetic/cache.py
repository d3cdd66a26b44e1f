"""Generate a synthetic dataset once per parameter set, then read it like a downloaded one.

A writer is any function `writer(root, **parameters)` that fills `root` with a dataset in some on-disk
layout. `generated` runs it on first use into `<parent>/<hash of the writer's name and parameters>/`
and returns that folder; `SyntheticDataModule` is the project's DataModule with that folder as its
root, so the data goes through exactly the layout, slice store and loaders a real dataset uses.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lesionseg.data.cases import Case
from lesionseg.data.datamodule import LesionDataModule

# Bump when a writer changes what it writes for the same parameters: every cached dataset is regenerated.
GENERATOR_VERSION = 3


def _plain(value: Any) -> Any:
    """Config values (OmegaConf containers, tuples) as JSON-ready dicts and lists."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


def writer_parameters(writer: functools.partial) -> dict[str, Any]:
    """What identifies a generated dataset: the writer's qualified name, its keyword arguments, the version."""
    name = f"{writer.func.__module__}.{writer.func.__qualname__}"
    return {"writer": name, "version": GENERATOR_VERSION, **_plain(writer.keywords)}


def generated(parent: str | Path, writer: functools.partial) -> Path:
    """`<parent>/<params-hash>`: the dataset `writer(folder)` writes, generated on first use.

    Generation happens in a temporary folder beside the target, which is renamed into place at once,
    so concurrent first uses (DDP ranks, sweep jobs) never see a partial tree.
    """
    parameters = writer_parameters(writer)
    key = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]
    target = Path(parent).expanduser() / key
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
    try:
        writer(building)
        (building / "parameters.json").write_text(json.dumps(parameters, indent=2))
        os.rename(building, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


class SyntheticDataModule(LesionDataModule):
    """`LesionDataModule` over the dataset `writer` generates in `<root or cache_dir/synthetic>/<params-hash>/`.

    `writer` is a partial writer (Hydra: `_target_` + `_partial_: true` + its parameters); the root
    is generated when the cases are first asked for, so composing a config writes nothing.
    """

    def __init__(self, writer: Callable[..., Any], cache_dir: str, root: str | None = None, **kwargs: Any):
        super().__init__(root=None, cache_dir=cache_dir, **kwargs)
        if not isinstance(writer, functools.partial):
            raise TypeError(f"data.writer must be a partial writer (_partial_: true), got {type(writer).__name__}")
        self.writer = writer
        self.parent = root or str(Path(cache_dir).expanduser() / "synthetic")

    def cases(self) -> list[Case]:
        if self.root is None:
            self.root = str(generated(self.parent, self.writer))
        return super().cases()
