"""Mask DINO (Li et al., CVPR 2023, "Mask DINO: Towards A Unified Transformer-based Framework for Object
Detection and Segmentation", arXiv 2206.02777), small and in plain PyTorch, for 2D lesion masks.

Queries predict masks as the dot product of their content embedding with a per-pixel embedding map,
m = q_c (x) M(T(C_b) + F(C_e)): C_b are the backbone's 1/4 features, C_e the transformer encoder's output
over the 1/8-1/32 features, upsampled to 1/4. The parts:

- backbone: any segmentation_models_pytorch encoder (`resnet18`, `tu-<timm model>`, ...), random init,
  features at strides 4, 8, 16, 32;
- pixel decoder: a Deformable-DETR encoder (multi-scale deformable self-attention, written here with
  `grid_sample`: no compiled ops) over the 1/8-1/32 features, fused with the 1/4 features;
- unified query selection: the encoder's tokens are scored by the class head, the top ones become the
  decoder's initial content queries (detached) and their token centres its anchors; their predictions
  are supervised too;
- transformer decoder: Mask2Former's masked attention (each query attends only inside its previous
  mask, an empty mask falls back to the whole map), one feature level per layer, coarse to fine; the
  class head (with a no-object class) and mask-embedding head predict after every layer;
- unified denoising (training only): noised ground-truth segments (flipped labels, noised boxes that
  give their anchor and bound their first masked attention) are extra queries that must reconstruct
  their segment. The model's `net(image)` contract has no
  targets, so the training output carries a `denoise` callable the set loss calls with them; it runs
  the decoder again for the noised queries, which see the matching queries' states of the same pass
  through self-attention exactly as in the joint attention-masked pass of DN-DETR.

In training mode `forward` returns a `MaskDINOOutput` (a dict: `seg` semantic logits for the metrics,
plus everything `lesionseg.mask_set_loss.MaskSetLoss` needs); in eval mode the semantic logits alone,
(B, K, H, W) at the input size: K = 1 is a binary lesion logit, K > 1 class scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from lesionseg.models.blocks import crop_to, pad_to_multiple

MASK_STRIDE = 4  # the per-pixel embedding map (and every predicted mask) is at 1/4 of the padded input
SEMANTIC_EPS = 1e-6


@dataclass
class Prediction:
    """One set of query predictions: class logits (B, Q, C + 1) with no-object last, mask logits (B, Q, h, w)."""

    class_logits: torch.Tensor
    mask_logits: torch.Tensor


@dataclass
class Segments:
    """Ground-truth segments per image: class indices (n,) and binary masks (n, h, w) in the padded frame."""

    labels: list[torch.Tensor]
    masks: list[torch.Tensor]


@dataclass
class Denoising:
    """Denoising-query predictions after every decoder layer; query g * size + j reconstructs target j."""

    predictions: list[Prediction]
    groups: int
    size: int


class MaskDINOOutput(TypedDict):
    """Training-mode output: `seg` for the module's metrics, the rest for the set-prediction loss."""

    seg: torch.Tensor
    predictions: list[Prediction]  # after every decoder layer; the last is the model's answer
    interm: Prediction  # the selected encoder tokens' predictions (query selection)
    denoise: Callable[[Segments], Denoising | None]
    mask_stride: int


def sine_embedding(points: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's sine embedding of normalised (x, y) points (..., 2) in [0, 1] into (..., dim) features."""
    half = dim // 2
    frequencies = temperature ** (2 * (torch.arange(half, device=points.device, dtype=torch.float32) // 2) / half)
    angles = points.float()[..., None] * (2 * math.pi) / frequencies  # (..., 2, half)
    embedded = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((embedded[..., 1, :], embedded[..., 0, :]), dim=-1)  # (y, x) features, as DETR


def grid_centres(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Normalised (x, y) centres (height * width, 2) of a feature map's cells, row-major."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.flatten(), grid_y.flatten()), dim=-1)


def mask_centroids(mask_logits: torch.Tensor) -> torch.Tensor:
    """Soft centroids (B, Q, 2) of the masks' sigmoid, as normalised (x, y); an empty mask gives the centre."""
    height, width = mask_logits.shape[-2:]
    weights = mask_logits.float().sigmoid().flatten(2)
    centres = grid_centres(height, width, mask_logits.device)
    return (weights @ centres + 0.5 * SEMANTIC_EPS) / (weights.sum(-1, keepdim=True) + SEMANTIC_EPS)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable DETR's multi-scale deformable attention (Zhu et al., ICLR 2021), pure PyTorch.

    Each query samples `points` locations per head and level around its reference point (offsets and
    weights predicted from the query) with bilinear `grid_sample`: cost linear in the number of tokens.
    """

    def __init__(self, dim: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by num_heads {heads}")
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_projection = nn.Linear(dim, dim)
        self.output_projection = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on rings around the reference point, uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        directions = torch.stack((angles.cos(), angles.sin()), dim=-1)
        directions = directions / directions.abs().amax(-1, keepdim=True)
        rings = directions[:, None, None, :] * torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(rings.expand(self.heads, self.levels, self.points, 2).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_projection, self.output_projection):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """query (B, N, d), reference (B, N, 2) normalised (x, y), value (B, S, d) = the levels' tokens."""
        batch, queries, dim = query.shape
        head_dim = dim // self.heads
        values = self.value_projection(value).view(batch, -1, self.heads, head_dim)
        offsets = self.sampling_offsets(query).float().view(batch, queries, self.heads, self.levels, self.points, 2)  # locations in fp32
        weights = self.attention_weights(query).view(batch, queries, self.heads, self.levels * self.points).softmax(-1)
        sizes = torch.tensor([[width, height] for height, width in shapes], device=query.device, dtype=torch.float32)
        locations = reference.float()[:, :, None, None, None, :] + offsets / sizes[None, None, None, :, None, :]
        grids = (2 * locations - 1).transpose(1, 2).flatten(0, 1)  # (B * heads, N, levels, points, 2)
        sampled = []
        for level, (level_values, (height, width)) in enumerate(zip(values.split([h * w for h, w in shapes], dim=1), shapes)):
            level_map = level_values.permute(0, 2, 3, 1).reshape(batch * self.heads, head_dim, height, width)
            sampled.append(F.grid_sample(level_map, grids[:, :, level].to(level_map.dtype), mode="bilinear", padding_mode="zeros", align_corners=False))
        stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B * heads, head_dim, N, levels * points)
        weights = weights.transpose(1, 2).reshape(batch * self.heads, 1, queries, self.levels * self.points)
        attended = (stacked * weights.to(stacked.dtype)).sum(-1).view(batch, dim, queries).transpose(1, 2)
        return self.output_projection(attended)


def feedforward(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Deformable DETR encoder layer (post-norm): deformable self-attention over all levels, then FFN."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiScaleDeformableAttention(dim, heads, levels, points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = feedforward(dim, hidden, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, reference: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        tokens = self.norm1(tokens + self.dropout(self.attention(tokens + position, reference, tokens, shapes)))
        return self.norm2(tokens + self.dropout(self.ffn(tokens)))


@dataclass
class Level:
    """One encoder output level as the decoder reads it: tokens (B, S, d), positions (B, S, d), shape."""

    tokens: torch.Tensor
    position: torch.Tensor
    shape: tuple[int, int]


def conv_norm(in_channels: int, out_channels: int, kernel_size: int, relu: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(math.gcd(32, out_channels), out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class PixelDecoder(nn.Module):
    """Transformer encoder over the 1/32, 1/16, 1/8 features, fused with the 1/4 features into the
    per-pixel embedding map M(T(C_b) + F(C_e)) (Mask2Former's MSDeformAttn pixel decoder, Mask DINO eq. 1)."""

    def __init__(self, in_channels: Sequence[int], dim: int, layers: int, heads: int, points: int, hidden: int, dropout: float) -> None:
        super().__init__()
        fine_channels, *coarse_channels = in_channels  # strides 4, then 8, 16, 32
        self.input_projections = nn.ModuleList(conv_norm(channels, dim, 1) for channels in reversed(coarse_channels))
        self.level_embedding = nn.Parameter(torch.zeros(len(coarse_channels), dim))
        nn.init.normal_(self.level_embedding)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, len(coarse_channels), points, hidden, dropout) for _ in range(layers))
        self.lateral = conv_norm(fine_channels, dim, 1)  # T(C_b)
        self.output_conv = conv_norm(dim, dim, 3, relu=True)  # M(.)
        self.mask_projection = nn.Conv2d(dim, dim, 1)  # the per-pixel embedding map

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[Level], torch.Tensor, torch.Tensor]:
        """Encoder levels (coarse to fine), the per-pixel embedding map (B, d, H/4, W/4) and token centres (N, 2)."""
        fine, *coarse = features
        maps = [projection(feature) for projection, feature in zip(self.input_projections, reversed(coarse))]
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        dim = maps[0].shape[1]
        centres = torch.cat([grid_centres(h, w, fine.device) for h, w in shapes])
        position = sine_embedding(centres, dim) + torch.cat([embedding.expand(h * w, dim) for embedding, (h, w) in zip(self.level_embedding, shapes)])
        position = position.to(maps[0].dtype)[None].expand(len(fine), -1, -1)
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
        reference = centres[None].expand(len(fine), -1, -1)
        for layer in self.layers:
            tokens = layer(tokens, position, reference, shapes)
        sizes = [h * w for h, w in shapes]
        levels = [Level(t, p, shape) for t, p, shape in zip(tokens.split(sizes, dim=1), position.split(sizes, dim=1), shapes)]
        encoded_fine = levels[-1].tokens.transpose(1, 2).reshape(len(fine), dim, *shapes[-1])  # C_e at 1/8
        upsampled = F.interpolate(encoded_fine, size=fine.shape[-2:], mode="bilinear", align_corners=False)  # F(C_e)
        mask_features = self.mask_projection(self.output_conv(self.lateral(fine) + upsampled))
        return levels, mask_features, centres


class DecoderLayer(nn.Module):
    """Mask2Former decoder layer (post-norm): masked cross-attention, self-attention, FFN.

    `context` (keys and positions of other queries) lets the denoising queries also attend the matching
    queries in self-attention, as the joint pass with DN-DETR's attention mask does.
    """

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.cross_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = feedforward(dim, hidden, dropout)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        query: torch.Tensor,
        query_position: torch.Tensor,
        level: Level,
        cross_mask: torch.Tensor,
        self_mask: torch.Tensor | None = None,
        context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The updated queries, and the queries after cross-attention (the context other queries attend)."""
        attended = self.cross_attention(query + query_position, level.tokens + level.position, level.tokens, attn_mask=cross_mask, need_weights=False)[0]
        query = self.norm1(query + attended)
        crossed = query
        keys, values = query + query_position, query
        if context is not None:
            keys = torch.cat((keys, context[0] + context[1]), dim=1)
            values = torch.cat((values, context[0]), dim=1)
        query = self.norm2(query + self.self_attention(query + query_position, keys, values, attn_mask=self_mask, need_weights=False)[0])
        return self.norm3(query + self.ffn(query)), crossed


def attention_mask(mask_logits: torch.Tensor, shape: tuple[int, int], heads: int) -> torch.Tensor:
    """Masked attention's mask (B * heads, Q, h * w): True (blocked) outside the query's predicted mask.

    A query whose mask is empty at this level attends everywhere instead (Mask2Former's rule), so no
    attention row is fully blocked and the softmax never yields NaN.
    """
    resized = F.interpolate(mask_logits.detach().float(), size=shape, mode="bilinear", align_corners=False)
    blocked = resized.flatten(2).sigmoid() < 0.5
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return blocked.repeat_interleave(heads, dim=0)


class MaskedAttentionDecoder(nn.Module):
    """The transformer decoder with its shared prediction heads; layer i reads level i mod 3 (coarse first).

    Query positions come from anchor points (DINO's anchors without box size): the selected token's centre
    at the start, then the soft centroid of the query's latest mask (detached, as DINO's look-forward-once).
    """

    def __init__(self, dim: int, heads: int, hidden: int, layers: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, hidden, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, classes + 1)
        self.mask_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.position_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def predict(self, query: torch.Tensor, mask_features: torch.Tensor) -> Prediction:
        """Class logits (with no-object) and masks as dot products of mask embeddings with the pixel map."""
        normed = self.norm(query)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_head(normed), mask_features)
        return Prediction(self.class_head(normed), mask_logits)

    def query_position(self, anchors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.position_head(sine_embedding(anchors, like.shape[-1]).to(like.dtype))

    def forward(
        self,
        query: torch.Tensor,
        anchors: torch.Tensor,
        levels: Sequence[Level],
        mask_features: torch.Tensor,
        initial_masks: torch.Tensor,
        self_mask: torch.Tensor | None = None,
        context: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[list[Prediction], list[tuple[torch.Tensor, torch.Tensor]]]:
        """Predictions after every layer, and every layer's (queries after cross-attention, positions)."""
        predictions, states = [], []
        mask_logits = initial_masks
        for index, layer in enumerate(self.layers):
            level = levels[index % len(levels)]
            position = self.query_position(anchors, query)
            cross_mask = attention_mask(mask_logits, level.shape, self.heads)
            query, crossed = layer(query, position, level, cross_mask, self_mask, None if context is None else context[index])
            states.append((crossed, position))
            prediction = self.predict(query, mask_features)
            predictions.append(prediction)
            mask_logits = prediction.mask_logits
            anchors = mask_centroids(mask_logits).detach()
        return predictions, states


class MaskDINO(nn.Module):
    """Mask DINO for 2D semantic lesion segmentation (see the module docstring).

    Args:
        in_channels: image channels (1 or 3).
        num_classes: logit channels K of the project's contract: 1 = binary lesion mask (the model then
            has two segment classes, background and lesion), K > 1 = K classes including background.
        encoder_name: segmentation_models_pytorch encoder (`resnet18`, `tu-convnext_atto`, ...), random init.
        hidden_dim: width of the transformer, the queries and the per-pixel embedding map.
        num_queries: matching queries selected from the encoder tokens.
        encoder_layers, decoder_layers: transformer depths (the paper: 6 and 9).
        num_heads, feedforward_dim, num_points: attention heads, FFN width, deformable sampling points.
        num_denoising: denoising queries per image in training (split into groups of the targets).
        label_noise: probability scale of flipping a denoising query's class (DN-DETR flips with half of it).
        box_noise: how far each side of a denoising box moves, as a fraction of the box's half size.
        dropout: transformer dropout (the paper: 0).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder_name: str = "resnet18",
        hidden_dim: int = 128,
        num_queries: int = 20,
        encoder_layers: int = 3,
        decoder_layers: int = 6,
        num_heads: int = 4,
        feedforward_dim: int = 512,
        num_points: int = 4,
        num_denoising: int = 20,
        label_noise: float = 0.2,
        box_noise: float = 0.4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden_dim % 4 or hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by 4 (sine embeddings) and by num_heads {num_heads}")
        self.num_classes = num_classes
        self.segment_classes = 2 if num_classes == 1 else num_classes
        self.num_queries = num_queries
        self.num_denoising = num_denoising
        self.label_noise = label_noise
        self.box_noise = box_noise
        self.backbone = smp.encoders.get_encoder(encoder_name, in_channels=in_channels, depth=5, weights=None)
        self.stride = 32
        channels = list(self.backbone.out_channels)[2:]  # strides 4, 8, 16, 32
        self.pixel_decoder = PixelDecoder(channels, hidden_dim, encoder_layers, num_heads, num_points, feedforward_dim, dropout)
        self.selection_projection = nn.Linear(hidden_dim, hidden_dim)  # DINO's enc_output + norm before scoring tokens
        self.selection_norm = nn.LayerNorm(hidden_dim)
        self.decoder = MaskedAttentionDecoder(hidden_dim, num_heads, feedforward_dim, decoder_layers, self.segment_classes, dropout)
        self.label_embedding = nn.Embedding(self.segment_classes, hidden_dim)  # denoising queries' content

    def forward(self, image: torch.Tensor) -> torch.Tensor | MaskDINOOutput:
        size = (int(image.shape[-2]), int(image.shape[-1]))
        features = self.backbone(pad_to_multiple(image, self.stride))[2:]
        levels, mask_features, centres = self.pixel_decoder(features)
        memory = torch.cat([level.tokens for level in levels], dim=1)
        interm, query, anchors = self.select_queries(memory, centres, mask_features)
        predictions, states = self.decoder(query, anchors, levels, mask_features, interm.mask_logits)
        seg = self.semantic_logits(predictions[-1], size)
        if not self.training:
            return seg
        return MaskDINOOutput(
            seg=seg,
            predictions=predictions,
            interm=interm,
            denoise=lambda targets: self.denoise(targets, levels, mask_features, states),
            mask_stride=MASK_STRIDE,
        )

    def select_queries(self, memory: torch.Tensor, centres: torch.Tensor, mask_features: torch.Tensor) -> tuple[Prediction, torch.Tensor, torch.Tensor]:
        """Unified query selection: the encoder tokens with the highest class score become the queries.

        Returns the selected tokens' predictions (supervised, so selection learns), their detached
        features (the decoder's initial content queries) and their centres (the initial anchors).
        """
        tokens = self.selection_norm(self.selection_projection(memory))
        scores = self.decoder.class_head(tokens).float().softmax(-1)[..., :-1].amax(-1)
        top = scores.topk(min(self.num_queries, scores.shape[1]), dim=1).indices
        selected = torch.gather(tokens, 1, top[..., None].expand(-1, -1, tokens.shape[-1]))
        interm = self.decoder.predict(selected, mask_features)
        return interm, selected.detach(), centres[top]

    def semantic_logits(self, prediction: Prediction, size: tuple[int, int]) -> torch.Tensor:
        """Mask2Former's semantic inference, as logits (B, K, H, W) at the input size.

        Segment-class scores s_c = sum_q softmax(class_q)_c * sigmoid(mask_q); binary: the lesion logit
        log s_lesion - log s_background, multi-class: log s_c (their softmax normalises the scores).
        """
        padded = (prediction.mask_logits.shape[-2] * MASK_STRIDE, prediction.mask_logits.shape[-1] * MASK_STRIDE)
        masks = crop_to(F.interpolate(prediction.mask_logits.float(), size=padded, mode="bilinear", align_corners=False), size).sigmoid()
        probabilities = prediction.class_logits.float().softmax(-1)[..., :-1]
        scores = torch.log(torch.einsum("bqc,bqhw->bchw", probabilities, masks) + SEMANTIC_EPS)
        return scores[:, 1:] - scores[:, :1] if self.num_classes == 1 else scores

    def denoise(
        self,
        targets: Segments,
        levels: Sequence[Level],
        mask_features: torch.Tensor,
        states: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> Denoising | None:
        """Unified denoising: groups of noised ground-truth queries that must reconstruct their segment.

        Content = the (sometimes flipped) label's embedding; box = the segment's bounding box with every
        side moved by up to `box_noise` of the box's half size (DINO's box noise). The noised box gives
        the query's anchor (its centre) and its first masked attention (inside the box), as the noised
        box is Mask DINO's denoising query. Groups do not see each other; every denoising query sees the
        matching queries (`states`), which never see the denoising ones. None when no image has a target.
        """
        size = max((len(labels) for labels in targets.labels), default=0)
        if size == 0 or self.num_denoising <= 0:
            return None
        groups = max(1, self.num_denoising // size)
        batch, device = len(targets.labels), mask_features.device
        labels = torch.zeros(batch, size, dtype=torch.long, device=device)
        boxes = torch.zeros(batch, size, 4, device=device)
        valid = torch.zeros(batch, size, dtype=torch.bool, device=device)
        for index, (image_labels, image_masks) in enumerate(zip(targets.labels, targets.masks)):
            count = len(image_labels)
            labels[index, :count] = image_labels
            valid[index, :count] = True
            if count:
                boxes[index, :count] = segment_boxes(image_masks.to(device))
        labels, boxes, valid = labels.repeat(1, groups), boxes.repeat(1, groups, 1), valid.repeat(1, groups)
        flip = torch.rand(labels.shape, device=device) < self.label_noise * 0.5
        labels = torch.where(flip, torch.randint_like(labels, self.segment_classes), labels)
        half = (boxes[..., 2:] - boxes[..., :2]).repeat(1, 1, 2) / 2
        noised = (boxes + (torch.rand(boxes.shape, device=device) * 2 - 1) * half * self.box_noise).clamp(0.0, 1.0)
        low, high = torch.minimum(noised[..., :2], noised[..., 2:]), torch.maximum(noised[..., :2], noised[..., 2:])
        query = self.label_embedding(labels).to(mask_features.dtype)
        self_mask = denoising_self_mask(valid, groups, size, states[0][0].shape[1], self.decoder.heads)
        initial = box_mask_logits(low, high, (int(mask_features.shape[-2]), int(mask_features.shape[-1])))
        predictions, _ = self.decoder(query, (low + high) / 2, levels, mask_features, initial, self_mask, states)
        return Denoising(predictions, groups, size)


def segment_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bounding boxes (n, 4) as normalised (x0, y0, x1, y1) of binary masks (n, h, w); zeros for an empty mask."""
    height, width = masks.shape[-2:]
    present = masks.flatten(1) > 0
    centres = grid_centres(height, width, masks.device)
    half_cell = torch.tensor([0.5 / width, 0.5 / height], device=masks.device)
    low = torch.where(present[..., None], centres[None], 2.0).amin(1) - half_cell
    high = torch.where(present[..., None], centres[None], -2.0).amax(1) + half_cell
    return torch.where(present.any(1, keepdim=True), torch.cat((low, high), dim=-1), 0.0)


def box_mask_logits(low: torch.Tensor, high: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Mask logits (B, n, h, w): +1 inside the boxes from corners `low` to `high` (B, n, 2), -1 outside."""
    centres = grid_centres(*shape, low.device)
    inside = ((centres >= low[..., None, :]) & (centres <= high[..., None, :])).all(-1)
    return (inside.float() * 2 - 1).view(*low.shape[:2], *shape)


def denoising_self_mask(valid: torch.Tensor, groups: int, size: int, matching: int, heads: int) -> torch.Tensor:
    """Self-attention mask (B * heads, G * n, G * n + Q) of the denoising queries: True = blocked.

    A denoising query sees its own group's real (not padding) queries and all Q matching queries.
    """
    group = torch.arange(groups * size, device=valid.device) // size
    other_group = group[:, None] != group[None, :]
    blocked = other_group[None] | ~valid[:, None, :]
    blocked = torch.cat((blocked, torch.zeros(*blocked.shape[:2], matching, dtype=torch.bool, device=valid.device)), dim=-1)
    return blocked.repeat_interleave(heads, dim=0)
