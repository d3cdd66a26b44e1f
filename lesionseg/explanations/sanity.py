"""Model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

Cascading randomisation: the network's parameterised layers are re-initialised group by group from
the output towards the input (`steps` groups), and after each step the map of the same slice and
target is recomputed. A map that explains the trained model must change: the SSIM between the
trained and the randomised map (scikit-image, data range 1) should fall well below 1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import nn


def parameter_layers(net: nn.Module) -> list[nn.Module]:
    """Modules that own parameters directly, in registration (roughly input-to-output) order."""
    return [module for module in net.modules() if any(True for _ in module.parameters(recurse=False))]


def randomise(layers: Sequence[nn.Module]) -> None:
    """Re-initialise `layers` as at construction (`reset_parameters`), or with Gaussian noise otherwise."""
    for layer in layers:
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            with torch.no_grad():
                for parameter in layer.parameters(recurse=False):
                    parameter.normal_(0.0, 0.02)


def ssim(first: np.ndarray, second: np.ndarray) -> float:
    """Structural similarity of two maps in [0, 1]."""
    return float(structural_similarity(first.astype(np.float64), second.astype(np.float64), data_range=1.0))


def cascading_randomisation(
    nets: Sequence[nn.Module], explain: Callable[[Sequence[nn.Module]], np.ndarray], trained_map: np.ndarray, steps: int, seed: int
) -> list[dict[str, float]]:
    """SSIM of the trained map with the map of progressively randomised copies of `nets`.

    `explain(copies)` returns the map of one slice computed with the given networks (same layer
    names as `nets`). Returns one row per step: fraction of layers randomised and the SSIM.
    """
    torch.manual_seed(seed)
    copies = [copy.deepcopy(net) for net in nets]
    layers = [list(reversed(parameter_layers(net))) for net in copies]
    rows = []
    for step in range(1, steps + 1):
        for member_layers in layers:
            start, stop = (len(member_layers) * (step - 1)) // steps, (len(member_layers) * step) // steps
            randomise(member_layers[start:stop])
        rows.append({"step": step, "randomised_fraction": step / steps, "ssim": ssim(trained_map, explain(copies))})
    return rows
