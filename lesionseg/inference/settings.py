"""The `inference` config node as one typed object: how probabilities become the final mask.

Every entry point (the test stage, `evaluate`, `predict`, `postprocess_select`, explanations) reads
the same `InferenceSettings`, built by `InferenceSettings.from_config(cfg)` from the run config:

- `threshold` (0.5): binary masks are foreground probability > threshold (argmax when multi-class).
  The historical top-level `threshold` key is an alias (`inference.threshold: ${threshold}`), and a
  checkpoint written before `inference.threshold` existed falls back to it.
- `tta_flips` ([]): flip test-time augmentation, dims of (B, C, H, W) (`[[3]]` = left-right).
- `keep_largest` / `min_size` / `min_size_ml` / `connectivity` / `cleanup_space`: connected-component
  clean-up (`lesionseg.inference.cleanup`), on the reassembled 3D volume by default.
- `cls_gate` (null): models with a lesion classifier empty every slice whose lesion probability is
  below the gate (the few-label stroke study's gating).
- `grid` (1): a model trained on a KxK grid of tiles predicts tile by tile (from `data.grid`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

CleanupSpace = Literal["volume", "slice"]


@dataclass(frozen=True)
class InferenceSettings:
    """Threshold, TTA, clean-up and gating: the whole `inference` node (see the module docstring)."""

    threshold: float = 0.5
    tta_flips: tuple[tuple[int, ...], ...] = ()
    keep_largest: bool = False
    min_size: int = 0
    min_size_ml: float = 0.0
    connectivity: int | None = None
    cleanup_space: CleanupSpace = "volume"
    cls_gate: float | None = None
    grid: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"inference.threshold={self.threshold}: use a probability in [0, 1]")
        if self.min_size < 0 or self.min_size_ml < 0:
            raise ValueError(f"inference.min_size={self.min_size}, inference.min_size_ml={self.min_size_ml}: sizes must be >= 0")
        if self.cleanup_space not in ("volume", "slice"):
            raise ValueError(f"inference.cleanup_space={self.cleanup_space!r}: use volume or slice")
        if self.connectivity is not None and self.connectivity not in (4, 8, 6, 18, 26):
            raise ValueError(f"inference.connectivity={self.connectivity}: use 6, 18 or 26 (3D), 4 or 8 (2D), or null (26 in 3D, 8 in 2D)")
        if self.grid < 1:
            raise ValueError(f"data.grid={self.grid}: must be >= 1")

    @property
    def cleans_up(self) -> bool:
        """True when connected-component clean-up changes masks."""
        return self.keep_largest or self.min_size > 0 or self.min_size_ml > 0

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None, threshold: float | None = None, grid: int = 1) -> InferenceSettings:
        """From an `inference` mapping; an unknown key is a ValueError naming it and the closest known key."""
        values = dict(node or {})
        known = [item.name for item in fields(cls) if item.name != "grid"]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean inference.{close[0]}?" if close else f"; known: {', '.join(known)}"
                raise ValueError(f"unknown key inference.{key}{hint}")
        if values.get("threshold") is None:
            values["threshold"] = 0.5 if threshold is None else threshold
        flips = values.get("tta_flips") or ()
        values["tta_flips"] = tuple(tuple(int(dim) for dim in dims) for dims in flips)
        return cls(**values, grid=int(grid))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> InferenceSettings:
        """From a run config: its `inference` node, the `threshold` alias and `data.grid`."""
        data = cfg.get("data") or {}
        return cls.from_mapping(cfg.get("inference"), cfg.get("threshold"), data.get("grid", 1) or 1)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (lists for flips) for JSON records."""
        values = asdict(self)
        values["tta_flips"] = [list(dims) for dims in self.tta_flips]
        return values
