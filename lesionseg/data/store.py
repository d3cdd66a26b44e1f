"""The slice store: every case decoded once into memory-mapped `.npy` files in the cache.

Entries live in `<cache_dir>/store/<dataset name>/<key>/`, where the key hashes the dataset root,
the layout and the preprocessing parameters, and each subject's entry records the (path, size,
mtime) of its source files: changing a preprocessing parameter opens a new folder, changing a source
file rebuilds that subject only. Every file is written with `lesionseg.outputs.atomic_write` (a temporary name in the same folder,
moved into place with `os.replace`; mode 0666 minus the umask), the subject's `.json` last, so a reader never sees a half-written entry and two
processes building the same store at once both end with a valid one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lesionseg.data.cases import Case, DataError, Layout
from lesionseg.data.preprocess import Preprocess
from lesionseg.data.validate import checked
from lesionseg.outputs import atomic_write

STORE_VERSION = 1
FLOAT16_MAX = float(np.finfo(np.float16).max)


class StoredCase:
    """One subject in the store: memory-mapped image (Z, C, H, W) float16 and mask (Z, H, W) uint8.

    Arrays open lazily and stay open per process; pickling (for DataLoader workers) sends paths only.
    """

    def __init__(self, subject: str, image_path: Path, mask_path: Path | None, lesion_slices: tuple[int, ...]):
        self.subject = subject
        self.image_path = image_path
        self.mask_path = mask_path
        self.lesion_slices = lesion_slices
        self._image: np.ndarray | None = None
        self._mask: np.ndarray | None = None

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = np.load(self.image_path, mmap_mode="r")
        return self._image

    @property
    def mask(self) -> np.ndarray | None:
        if self._mask is None and self.mask_path is not None:
            self._mask = np.load(self.mask_path, mmap_mode="r")
        return self._mask

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_image": None, "_mask": None}

    def __repr__(self) -> str:
        return f"StoredCase({self.subject!r}, {self.image_path.parent})"


def _layout_parameters(layout: Layout) -> dict:
    """What keys a layout's decoding: its class and, for dataclass layouts, its fields."""
    fields: dict = dataclasses.asdict(layout) if dataclasses.is_dataclass(layout) and not isinstance(layout, type) else {}
    return {"class": f"{type(layout).__module__}.{type(layout).__qualname__}", **fields}


def _source_fingerprint(case: Case) -> list[list]:
    """(path, size, mtime_ns) of every source file of a case; DataError when one is missing."""
    sources = []
    for path in (*case.image, *case.mask):
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"{path}: cannot read source file ({exc.strerror})") from exc
        sources.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return sources


def _file_name(subject: str) -> str:
    """A file-system-safe, collision-free name for a subject id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", subject)
    return safe if safe == subject else f"{safe}-{hashlib.sha1(subject.encode()).hexdigest()[:8]}"


class SliceStore:
    """Decoded, preprocessed, validated cases of one dataset root under one preprocessing."""

    def __init__(
        self,
        cache_dir: str | Path,
        name: str,
        source: str | Path,
        layout: Layout,
        preprocess: Preprocess,
        strict_masks: bool = False,
        num_classes: int = 1,
    ):
        self.layout = layout
        self.preprocess = preprocess
        self.strict_masks = strict_masks
        self.num_classes = num_classes
        parameters = {
            "version": STORE_VERSION,
            "source": str(Path(source).expanduser().resolve()),
            "layout": _layout_parameters(layout),
            "preprocess": preprocess.fingerprint(),
        }
        if num_classes > 1:  # binary stores keep the key they always had
            parameters["num_classes"] = num_classes
        key = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = Path(cache_dir).expanduser() / "store" / name / key
        self.folder.mkdir(parents=True, exist_ok=True)
        parameters_file = self.folder / "parameters.json"
        if not parameters_file.exists():
            atomic_write(parameters_file, lambda f: f.write(json.dumps(parameters, indent=2, default=str).encode()))

    def build(self, cases: Iterable[Case], description: str = "slice store") -> list[StoredCase]:
        """Store entries for `cases` (decoding only those missing or out of date), in the given order."""
        cases = list(cases)
        return [self.entry(case) for case in tqdm(cases, desc=description, unit="case", disable=None, leave=False)]

    def entry(self, case: Case) -> StoredCase:
        """The stored entry of one case, built first when missing or out of date."""
        sources = _source_fingerprint(case)
        stem = self.folder / _file_name(case.subject)
        record_path = stem.with_name(stem.name + ".json")
        record = self._read_record(record_path)
        if record is None or record["sources"] != sources:
            record = self._write(case, stem, record_path, sources)
        elif record["mask_problem"]:
            if self.strict_masks:
                raise DataError(f"{record['mask_problem']} (strict_masks=true)")
            warnings.warn(f"{record['mask_problem']}; binarised as > 0", stacklevel=2)
        mask_path = stem.with_name(stem.name + ".mask.npy") if record["labelled"] else None
        return StoredCase(case.subject, stem.with_name(stem.name + ".image.npy"), mask_path, tuple(record["lesion_slices"]))

    @staticmethod
    def _read_record(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _write(self, case: Case, stem: Path, record_path: Path, sources: list[list]) -> dict:
        arrays, mask_problem = checked(case, self.layout.load(case), self.strict_masks, self.num_classes)
        if mask_problem:
            warnings.warn(f"{mask_problem}; binarised as > 0", stacklevel=3)
        try:
            image, mask = self.preprocess(arrays.image, arrays.mask)
        except ValueError as exc:
            raise DataError(f"{case.image[0]}: {exc}") from exc
        peak = float(np.abs(image).max(initial=0.0))
        if peak > FLOAT16_MAX:
            raise DataError(
                f"{case.image[0]}: preprocessed intensities reach {peak:.3g}, beyond the slice store's float16 (65504); "
                "normalise them (data.preprocess.normalisation: max, zscore, or constant with a larger scale)"
            )
        atomic_write(stem.with_name(stem.name + ".image.npy"), lambda f: np.save(f, image.astype(np.float16)))
        if mask is not None:
            atomic_write(stem.with_name(stem.name + ".mask.npy"), lambda f: np.save(f, mask.astype(np.uint8)))
        record = {
            "subject": case.subject,
            "sources": sources,
            "shape": list(image.shape),
            "labelled": mask is not None,
            "lesion_slices": [] if mask is None else np.flatnonzero(mask.any(axis=(1, 2))).tolist(),
            "mask_problem": mask_problem,
        }
        atomic_write(record_path, lambda f: f.write(json.dumps(record).encode()))
        return record
