"""Measure the data pipeline (`python -m lesionseg.bench data`).

On synthetic volumes at real ATLAS size (197x233x189, X-Net crop to 224x192) it reports, in one run:
1. slices/s read through the slice store vs decoding the same slices from `.nii.gz` per item, and the
   ratio (target >= 20x): why the store exists;
2. augmented 224x192 training slices/s out of the DataLoader (workers, pinned memory when a GPU is
   there, persistent workers; target >= 1,000/s on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from lesionseg.config import CONF_DIR
from lesionseg.data.atlas import AtlasLayout
from lesionseg.data.datamodule import LesionDataModule
from lesionseg.data.slices import SliceDataset
from lesionseg.synthetic.atlas import synthetic_atlas

ATLAS_SHAPE = (197, 233, 189)
XNET_PREPROCESS = {"crop": [[5, 229], [2, 194]], "normalisation": "constant", "scale": 100.0}
STORE_TARGET_RATIO, LOADER_TARGET = 20.0, 1000.0


def _rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def store_reads_per_second(dataset: SliceDataset, seconds: float, rng: np.random.Generator) -> float:
    """Random slices read through the store (memory-mapped .npy) for about `seconds`."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for index in rng.integers(len(dataset), size=256):
            dataset[int(index)]
        count += 256
    return _rate(count, time.perf_counter() - start)


def nifti_reads_per_second(module: LesionDataModule, items: int, rng: np.random.Generator) -> float:
    """The same kind of item made the slow way: decode the subject's .nii.gz, then preprocess a slice."""
    cases = module.labelled_cases()
    start = time.perf_counter()
    for _ in range(items):
        case = cases[int(rng.integers(len(cases)))]
        arrays = module.layout.load(case)
        z = int(rng.integers(arrays.image.shape[0]))
        module.preprocess(arrays.image[z : z + 1], None if arrays.mask is None else arrays.mask[z : z + 1])
    return _rate(items, time.perf_counter() - start)


def loader_slices_per_second(module: LesionDataModule, seconds: float) -> float:
    """Augmented training slices per second out of the DataLoader, after one warm-up batch."""
    loader = module.train_dataloader()
    next(iter(loader))  # start the (persistent) workers
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in loader:
            count += len(batch["image"])
            if time.perf_counter() - start >= seconds:
                break
    return _rate(count, time.perf_counter() - start)


def augment_config(name: str) -> DictConfig | None:
    """The `augment` node of the train config composed with `augment=<name>`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"augment={name}"]).augment


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lesionseg.bench data", description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=4, help="synthetic ATLAS-size subjects (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=ATLAS_SHAPE, metavar=("X", "Y", "Z"))
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", default="default", help="conf/augment/<name>.yaml (default: default)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per throughput measurement")
    parser.add_argument("--nifti-items", type=int, default=4, help="items decoded from .nii.gz (slow)")
    default_cache = os.environ.get("LESIONSEG_CACHE", str(Path.home() / ".cache" / "lesionseg"))
    parser.add_argument("--cache-dir", default=default_cache)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> dict[str, float]:
    args = parse(argv)
    crop_fits = args.shape[1] >= 229 and args.shape[0] >= 194
    started = time.perf_counter()
    root = synthetic_atlas(Path(args.cache_dir) / "bench", args.subjects, 0, tuple(args.shape), seed=0)
    generated = time.perf_counter() - started
    augment = instantiate(augment_config(args.augment))
    module = LesionDataModule(
        layout=AtlasLayout(),
        root=str(root),
        name="bench",
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        num_workers=args.workers,
        num_folds=2,
        test_fraction=0.0,
        preprocess=XNET_PREPROCESS if crop_fits else {"normalisation": "constant", "scale": 100.0},
        augment=augment,
    )
    started = time.perf_counter()
    module.setup("fit")
    stored = time.perf_counter() - started
    rng = np.random.default_rng(0)
    everything = SliceDataset.all_slices(list(module.stored.values()))
    height, width = everything[0]["image"].shape[1:]
    store_rate = store_reads_per_second(everything, args.seconds, rng)
    nifti_rate = nifti_reads_per_second(module, args.nifti_items, rng)
    loader_rate = loader_slices_per_second(module, args.seconds)
    results = {
        "store_slices_per_s": store_rate,
        "nifti_slices_per_s": nifti_rate,
        "store_speedup": store_rate / nifti_rate,
        "loader_slices_per_s": loader_rate,
    }
    print(f"data: {args.subjects} synthetic subjects {tuple(args.shape)} (generated in {generated:.1f} s, stored in {stored:.1f} s) -> slices {height}x{width}")
    print(f"store reads      {store_rate:12,.0f} slices/s")
    print(f"nifti per item   {nifti_rate:12,.1f} slices/s")
    verdict = "ok" if results["store_speedup"] >= STORE_TARGET_RATIO else "BELOW TARGET"
    print(f"store speed-up   {results['store_speedup']:12,.0f} x   (target >= {STORE_TARGET_RATIO:.0f}x: {verdict})")
    verdict = "ok" if loader_rate >= LOADER_TARGET else "BELOW TARGET"
    print(
        f"loader augmented {loader_rate:12,.0f} slices/s (augment={args.augment}, workers={args.workers}, "
        f"batch {args.batch_size}; target >= {LOADER_TARGET:,.0f}/s: {verdict})"
    )
    return results
