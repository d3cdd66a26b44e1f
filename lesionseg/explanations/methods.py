"""Saliency methods behind one signature: (models, slices, targets) -> maps (N, H, W) in [0, 1].

- `gradcam`, `gradcampp`: pytorch-grad-cam's `GradCAM` / `GradCAMPlusPlus` at the member's target
  layer, upsampled to the slice size and min-max scaled per slice by the library.
- `lime`: `lime_image` with SLIC superpixels (`lime.wrappers.scikit_image`), a fixed seed, and a
  classifier function giving the perturbed prediction's lesion score inside the explained mask (see `targets`);
  the map is the superpixels' positive weights (scaled by the largest).
- `occlusion`: Captum's `Occlusion` (a square window slid with a stride, replaced by 0 = background
  after the checkpoint's normalisation) on the same score; positive part, scaled by the largest.
- `random`: a seeded uniform-noise map, the baseline every faithfulness score is compared with.

An ensemble is explained member by member (gradient methods at each member's own layer) and the
maps are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from captum.attr import Occlusion
from lime.lime_image import LimeImageExplainer
from lime.wrappers.scikit_image import SegmentationAlgorithm
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from torch import nn

from lesionseg.config import UsageError
from lesionseg.explanations.targets import Target

GRADIENT_METHODS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus}
METHODS = ("gradcam", "gradcampp", "lime", "occlusion", "random")


@dataclass(frozen=True)
class LimeSettings:
    num_samples: int = 200
    n_segments: int = 60
    compactness: float = 10.0
    sigma: float = 1.0
    batch_size: int = 32


@dataclass(frozen=True)
class OcclusionSettings:
    window: int = 32
    stride: int = 16
    batch_size: int = 32


@dataclass(frozen=True)
class MethodSettings:
    seed: int = 0
    lime: LimeSettings = field(default_factory=LimeSettings)
    occlusion: OcclusionSettings = field(default_factory=OcclusionSettings)


@dataclass
class ExplainedModel:
    """One member as the methods see it: its explained output and its Grad-CAM target layer."""

    model: nn.Module
    layer: nn.Module
    layer_name: str


def check_methods(methods: Sequence[str]) -> list[str]:
    """The requested methods, or a one-line UsageError naming an unknown one."""
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise UsageError(f"method={','.join(unknown) or '(none)'}: unknown method; use one or more of {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def gradient_maps(method: str, member: ExplainedModel, images: torch.Tensor, targets: Sequence[Target]) -> np.ndarray:
    cam = GRADIENT_METHODS[method](model=member.model, target_layers=[member.layer])
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=images, targets=[target.gradient_target() for target in targets])
    except (ValueError, IndexError) as error:  # the layer's output is no (B, C, H, W) feature map, or never ran
        raise UsageError(f"explain.layer={member.layer_name}: cannot compute {method} there ({type(error).__name__}: {error})") from None
    finally:
        cam.activations_and_grads.release()
    return np.asarray(maps, dtype=np.float32)


def lime_map(model: nn.Module, image: torch.Tensor, target: Target, settings: MethodSettings) -> np.ndarray:
    """LIME weights of SLIC superpixels of one (C, H, W) slice, as a map."""
    values = image.detach().cpu().numpy().astype(np.float64)
    channels = len(values)
    if channels not in (1, 3):
        raise UsageError(f"method=lime: needs 1 or 3 input channels, the model takes {channels}")
    low = values.min(axis=(1, 2), keepdims=True)
    span = np.maximum(values.max(axis=(1, 2), keepdims=True) - low, 1e-6)
    picture = ((values - low) / span).transpose(1, 2, 0)  # (H, W, C) in [0, 1]; hide colour 0 = the slice minimum
    picture = picture[..., 0] if channels == 1 else picture

    def classify(batch: np.ndarray) -> np.ndarray:
        planes = batch[..., :1] if channels == 1 else batch
        inputs = torch.from_numpy((planes.transpose(0, 3, 1, 2) * span + low).astype(np.float32)).to(image.device)
        with torch.no_grad():
            scores = target.score(model(inputs)).cpu().numpy()
        return np.stack([1 - scores, scores], axis=1)

    options = settings.lime
    segmenter = SegmentationAlgorithm("slic", n_segments=options.n_segments, compactness=options.compactness, sigma=options.sigma, start_label=0)
    explanation = LimeImageExplainer(random_state=settings.seed).explain_instance(
        picture,
        classify,
        labels=(1,),
        top_labels=None,
        hide_color=0,
        num_samples=options.num_samples,
        batch_size=options.batch_size,
        segmentation_fn=segmenter,
        random_seed=settings.seed,
    )
    weights = np.zeros(int(explanation.segments.max()) + 1, dtype=np.float32)
    for segment, weight in explanation.local_exp[1]:
        weights[segment] = weight
    return scaled_positive(weights[explanation.segments])


def occlusion_map(model: nn.Module, image: torch.Tensor, target: Target, settings: MethodSettings) -> np.ndarray:
    """Captum occlusion of one (C, H, W) slice: drop of the target score when a window is zeroed."""
    options = settings.occlusion
    channels = image.shape[0]
    with torch.no_grad():
        attribution = Occlusion(lambda inputs: target.score(model(inputs))).attribute(
            image[None],
            sliding_window_shapes=(channels, options.window, options.window),
            strides=(channels, options.stride, options.stride),
            baselines=0.0,
            perturbations_per_eval=options.batch_size,
        )
    return scaled_positive(attribution[0].sum(dim=0).cpu().numpy())


def scaled_positive(values: np.ndarray) -> np.ndarray:
    """The positive part of an attribution, scaled so its maximum is 1 (all zeros stay zeros)."""
    positive = np.maximum(values, 0).astype(np.float32)
    peak = float(positive.max())
    return positive / peak if peak > 0 else positive


def compute_maps(method: str, members: Sequence[ExplainedModel], images: torch.Tensor, targets: Sequence[Target], settings: MethodSettings) -> np.ndarray:
    """Maps (N, H, W) in [0, 1] of `method` for slices `images` (N, C, H, W), averaged over members."""
    if method == "random":
        rng = np.random.default_rng(settings.seed)
        return rng.random((len(images), *images.shape[-2:])).astype(np.float32)
    per_member = []
    for member in members:
        if method in GRADIENT_METHODS:
            per_member.append(gradient_maps(method, member, images, targets))
        else:
            single = lime_map if method == "lime" else occlusion_map
            per_member.append(np.stack([single(member.model, image, target, settings) for image, target in zip(images, targets)]))
    return np.mean(per_member, axis=0).astype(np.float32)
