"""Subject-level train/val/test splits: a held-out test fraction, then k-fold CV over the rest.

Splitting by subject (never by slice) keeps every slice of a subject in one split. With
`shuffle=False` the folds are contiguous blocks of the sorted subjects, as scikit-learn's unshuffled
`KFold` used by X-Net's released code (Qi et al., MICCAI 2019).
"""

from __future__ import annotations

import numpy as np

from lesionseg.data.cases import DataError


def split_subjects(
    subjects: list[str],
    num_folds: int = 5,
    fold: int = 0,
    test_fraction: float = 0.2,
    seed: int = 42,
    shuffle: bool = True,
) -> dict[str, list[str]]:
    """Deterministic {"train", "val", "test"} lists of subject ids (each sorted, disjoint)."""
    if num_folds < 2:
        raise ValueError(f"data.num_folds={num_folds}: need at least 2 folds")
    if not 0 <= fold < num_folds:
        raise ValueError(f"data.fold={fold}: must be in 0..{num_folds - 1}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"data.test_fraction={test_fraction}: must be in [0, 1)")
    ordered = sorted(set(subjects))
    rng = np.random.default_rng(seed)
    num_test = int(round(len(ordered) * test_fraction))
    test_positions = set(rng.permutation(len(ordered))[:num_test].tolist())
    test = [s for i, s in enumerate(ordered) if i in test_positions]
    pool = [s for i, s in enumerate(ordered) if i not in test_positions]
    if len(pool) < num_folds:
        raise DataError(
            f"{len(ordered)} subjects leave {len(pool)} for {num_folds}-fold cross-validation (test_fraction={test_fraction}); need at least {num_folds}"
        )
    order = rng.permutation(len(pool)) if shuffle else np.arange(len(pool))
    folds = np.array_split(order, num_folds)
    val = {pool[i] for i in folds[fold]}
    return {
        "train": sorted(s for s in pool if s not in val),
        "val": sorted(val),
        "test": test,
    }
