"""Faithfulness and plausibility of saliency maps, per scan and method.

- ROAD (Rong et al., ICML 2022, pytorch-grad-cam's `ROADMostRelevantFirstAverage` /
  `ROADLeastRelevantFirstAverage`): pixels are removed by noisy linear imputation in order of the
  map, at each of `percentiles`, and the change of the lesion score (mean lesion probability inside
  the explained mask) is averaged. `road_morf` (most relevant removed first: lower, i.e. a
  faster drop, is more faithful), `road_lerf` (least relevant first: nearer 0 is better) and
  `road_combined` = (lerf - morf) / 2 (higher is better; ~0 for an uninformative map). Ties in a map
  are broken by a seeded random order, so a flat region does not remove everything at once.
- Energy in the lesion: the share of the map's sum that lies inside the ground-truth lesion, beside
  the lesion's share of the pixels (`lesion_area_fraction`): a map that points at the lesion puts
  clearly more energy there than its area (`energy_ratio` = energy / area > 1).
- Pointing game (Zhang et al., ECCV 2016): the map's maximum lies inside the ground-truth lesion
  (hit rate over the explained slices that hold a lesion).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from torch import nn

from lesionseg.explanations.targets import Target


def strict_ranks(maps: np.ndarray, seed: int) -> np.ndarray:
    """Each map's values replaced by their rank scaled to [0, 1]; ties broken in a seeded random order."""
    rng = np.random.default_rng(seed)
    ranked = np.empty_like(maps, dtype=np.float32)
    for index, values in enumerate(maps):
        flat = values.ravel()
        order = np.lexsort((rng.random(flat.size), flat))
        ranks = np.empty(flat.size, dtype=np.float32)
        ranks[order] = np.arange(flat.size, dtype=np.float32) / max(flat.size - 1, 1)
        ranked[index] = ranks.reshape(values.shape)
    return ranked


def road_scores(model: nn.Module, images: torch.Tensor, maps: np.ndarray, targets: Sequence[Target], percentiles: Sequence[int], seed: int) -> dict[str, float]:
    """Mean ROAD MoRF, LeRF and combined scores of `maps` (N, H, W) over the slices `images`."""
    ranked = strict_ranks(maps, seed)
    torch.manual_seed(seed)  # the imputer's noise
    morf = ROADMostRelevantFirstAverage(list(percentiles))(images, ranked, list(targets), model)
    lerf = ROADLeastRelevantFirstAverage(list(percentiles))(images, ranked, list(targets), model)
    return {"road_morf": float(np.mean(morf)), "road_lerf": float(np.mean(lerf)), "road_combined": float(np.mean((lerf - morf) / 2))}


def energy_in(maps: np.ndarray, region: np.ndarray) -> float:
    """Share of the maps' total inside `region` (same shape); NaN for all-zero maps."""
    total = float(maps.sum())
    return float((maps * (region > 0)).sum()) / total if total > 0 else float("nan")


def pointing_game(maps: np.ndarray, lesion: np.ndarray) -> float:
    """Fraction of slices holding a lesion whose map maximum lies inside it; NaN if none holds one."""
    hits = [bool(region.ravel()[int(np.argmax(values))] > 0) for values, region in zip(maps, lesion) if region.any()]
    return float(np.mean(hits)) if hits else float("nan")


def plausibility_scores(maps: np.ndarray, prediction: np.ndarray, lesion: np.ndarray | None) -> dict[str, float]:
    """Energy in the predicted mask; with labels, energy in the lesion vs its area, and the pointing game."""
    scores = {"energy_in_prediction": energy_in(maps, prediction)}
    if lesion is None:
        return scores | {"energy_in_lesion": float("nan"), "lesion_area_fraction": float("nan"), "energy_ratio": float("nan"), "pointing_game": float("nan")}
    fraction = float((lesion > 0).mean())
    energy = energy_in(maps, lesion)
    return scores | {
        "energy_in_lesion": energy,
        "lesion_area_fraction": fraction,
        "energy_ratio": energy / fraction if fraction > 0 else float("nan"),
        "pointing_game": pointing_game(maps, lesion),
    }
