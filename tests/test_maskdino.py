"""Mask DINO (`model=maskdino`) and its set-prediction loss (`loss=mask_set`): matching, decoder outputs,
masked attention without NaN, lesion-free slices, overfitting one batch, the LGG recipe's parameter groups
and a run through `lesionseg.train`. The catalog contract (input sizes, gradients, channels_last, bf16)
for the default config runs in test_models.py; here a tiny network keeps the tests quick."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from hydra_helpers import compose_train
from omegaconf import DictConfig, OmegaConf

from lesionseg.factory import build_module, build_net
from lesionseg.mask_set_loss import HungarianMatcher, MaskSetLoss, segments_per_process, semantic_segments
from lesionseg.models.maskdino import MaskDINO, Prediction, Segments, attention_mask, box_mask_logits, segment_boxes
from lesionseg.optim import build_optimizer
from lesionseg.training import train

TINY = {
    "encoder_name": "resnet18",
    "hidden_dim": 32,
    "num_queries": 6,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "num_heads": 2,
    "feedforward_dim": 64,
    "num_denoising": 4,
}


def tiny(in_channels: int = 1, num_classes: int = 1, **overrides: object) -> MaskDINO:
    torch.manual_seed(0)
    return MaskDINO(in_channels, num_classes, **{**TINY, **overrides})  # type: ignore[arg-type]


def lesion_batch(num_classes: int = 1, in_channels: int = 1, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images with bright square lesions (class 1, or 1 and 2) and their masks."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, size, size, dtype=torch.long)
    masks[0, 10:30, 12:40] = 1
    masks[1, 35:60, 5:25] = 1
    if num_classes > 2:
        masks[1, 5:20, 40:60] = 2
    images = torch.randn(2, in_channels, size, size, generator=generator) + 2.0 * (masks > 0).unsqueeze(1)
    return images, masks


# --- matcher -----------------------------------------------------------------------------------


def band_masks(count: int, size: int = 16) -> torch.Tensor:
    """`count` disjoint horizontal bands (count, size, size) as binary masks."""
    masks = torch.zeros(count, size, size)
    for index in range(count):
        masks[index, index * size // count : (index + 1) * size // count] = 1
    return masks


def test_matcher_with_zero_one_and_several_targets() -> None:
    queries, classes = 5, 3
    # Query q predicts band (q + 1) mod 3 of class (q + 1) mod 3 (queries 3, 4 duplicate 0, 1 weakly).
    bands = band_masks(3)
    mask_logits = torch.stack([(bands[(q + 1) % 3] * 2 - 1) * (8.0 if q < 3 else 1.0) for q in range(queries)])
    class_logits = torch.full((queries, classes + 1), -4.0)
    for query in range(queries):
        class_logits[query, (query + 1) % 3] = 4.0 if query < 3 else 0.0
    prediction = Prediction(class_logits.expand(3, -1, -1), mask_logits.expand(3, -1, -1, -1))
    segments = Segments(
        labels=[torch.empty(0, dtype=torch.long), torch.tensor([2]), torch.tensor([0, 1, 2])],
        masks=[torch.empty(0, 16, 16), bands[2:3], bands],
    )
    indices = HungarianMatcher(4.0, 5.0, 5.0, num_points=256)(prediction, segments)
    assert [len(queries) for queries, _ in indices] == [0, 1, 3]
    assert indices[1][0].tolist() == [1] and indices[1][1].tolist() == [0]  # query 1 predicts band 2 of class 2
    assert dict(zip(indices[2][1].tolist(), indices[2][0].tolist())) == {0: 2, 1: 0, 2: 1}


def test_semantic_segments_give_one_segment_per_present_class_and_background_for_empty_slices() -> None:
    target = torch.zeros(2, 5, 6, dtype=torch.long)
    target[1, 1:3, 2:4] = 1
    segments = semantic_segments(target, num_classes=1, frame=(8, 8))
    assert [labels.tolist() for labels in segments.labels] == [[0], [0, 1]]
    assert segments.masks[0].shape == (1, 8, 8) and segments.masks[0].sum() == 30  # padding is no segment
    assert segments.masks[1][1].sum() == 4


# --- decoder outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 1), (3, 3)])
def test_predictions_after_every_decoder_layer_and_for_denoising_queries(in_channels: int, num_classes: int) -> None:
    model = tiny(in_channels, num_classes, decoder_layers=3).train()
    images, masks = lesion_batch(num_classes, in_channels, size=72)  # padded to 96 inside
    output = model(images)
    segment_classes = 2 if num_classes == 1 else num_classes
    assert output["seg"].shape == (2, num_classes, 72, 72)
    assert len(output["predictions"]) == 3
    for prediction in [*output["predictions"], output["interm"]]:
        assert prediction.class_logits.shape == (2, 6, segment_classes + 1)
        assert prediction.mask_logits.shape == (2, 6, 24, 24)  # 1/4 of the padded 96x96 input
    segments = semantic_segments(masks, num_classes, (96, 96))
    denoised = output["denoise"](segments)
    size = max(len(labels) for labels in segments.labels)
    assert denoised.size == size and denoised.groups == 4 // size
    assert len(denoised.predictions) == 3
    assert denoised.predictions[-1].mask_logits.shape == (2, denoised.groups * size, 24, 24)
    with torch.no_grad():
        assert model.eval()(images).shape == (2, num_classes, 72, 72)


def test_denoising_boxes_bound_their_segments_and_their_first_attention() -> None:
    masks = torch.zeros(3, 8, 10)
    masks[0, 2:4, 5:9] = 1
    masks[2, 0, 0] = 1
    boxes = segment_boxes(masks)  # normalised (x0, y0, x1, y1); an empty mask has no box
    torch.testing.assert_close(boxes, torch.tensor([[0.5, 0.25, 0.9, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.1, 0.125]]))
    inside = box_mask_logits(boxes[None, :, :2], boxes[None, :, 2:], (8, 10))[0] > 0
    assert torch.equal(inside, masks.bool())


def test_empty_attention_masks_attend_everywhere_without_nan() -> None:
    mask_logits = torch.full((2, 3, 8, 8), -20.0)
    mask_logits[0, 0, :4] = 20.0  # one query with a mask, the others empty
    blocked = attention_mask(mask_logits, (4, 4), heads=2)
    assert blocked.shape == (4, 3, 16)
    assert blocked[0, 0].sum() == 8 and not blocked[0, 1:].any() and not blocked[2:].any()
    model = tiny().train()
    images, _ = lesion_batch()
    with torch.no_grad():
        features = model.backbone(images)[2:]
        levels, mask_features, _ = model.pixel_decoder(features)
        query = torch.randn(2, 6, 32)
        anchors = torch.rand(2, 6, 2)
        predictions, _ = model.decoder(query, anchors, levels, mask_features, torch.full((2, 6, 16, 16), -1e4))
    assert all(torch.isfinite(p.class_logits).all() and torch.isfinite(p.mask_logits).all() for p in predictions)


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 3])
def test_slices_without_lesion_train(num_classes: int) -> None:
    model = tiny(num_classes=num_classes).train()
    images = torch.randn(2, 1, 64, 64)
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    loss = MaskSetLoss(num_classes, num_points=256)(model(images), masks)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_set_loss_without_any_segment_is_finite() -> None:
    prediction = Prediction(torch.randn(1, 4, 3, requires_grad=True), torch.randn(1, 4, 8, 8, requires_grad=True))
    criterion = MaskSetLoss(1, num_points=64)
    empty = Segments([torch.empty(0, dtype=torch.long)], [torch.empty(0, 8, 8)])
    loss = criterion.prediction_loss(prediction, empty, criterion.matcher(prediction, empty), num_masks=1)
    loss.backward()
    assert torch.isfinite(loss) and prediction.mask_logits.grad is not None


def test_loss_normaliser_averages_the_segments_over_processes(tmp_path) -> None:
    assert segments_per_process(0, torch.device("cpu")) == 1.0  # never divides by zero
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert segments_per_process(3, torch.device("cpu")) == 3.0
    finally:
        torch.distributed.destroy_process_group()


def test_eval_logits_are_scored_with_dice_ce() -> None:
    criterion = MaskSetLoss(1)
    _, masks = lesion_batch()
    perfect = (masks[:, None].float() * 2 - 1) * 20
    assert criterion(perfect, masks) < 0.01 < criterion(-perfect, masks)


def test_module_hands_the_set_loss_the_whole_training_output_and_plain_logits_otherwise(train_config) -> None:
    module = build_module(train_config("model=maskdino", "loss=mask_set", "loss.num_points=64"), net=tiny())
    received = []
    set_loss = module.loss.forward
    module.loss.forward = lambda output, target: received.append(type(output)) or set_loss(output, target)
    images, masks = lesion_batch()
    batch = {"image": images, "mask": masks}
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        module.eval().validation_step(batch, 0)
    assert received == [dict, torch.Tensor]
    assert loss > 1.0  # the set loss sums class, mask and Dice terms over 3 prediction sets and denoising


def test_one_batch_overfits_to_dice_above_0_9() -> None:
    model = tiny(hidden_dim=64, num_heads=2, feedforward_dim=128)
    criterion = MaskSetLoss(1, num_points=512)
    images, masks = lesion_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dice = 0.0
    for step in range(1, 31):
        model.train()
        optimizer.zero_grad()
        criterion(model(images), masks).backward()
        optimizer.step()
        if step % 5 == 0:
            with torch.no_grad():
                predicted = (model.eval()(images)[:, 0] > 0).float()
            dice = float(2 * (predicted * masks).sum() / (predicted.sum() + masks.sum()))
            if dice > 0.9:
                break
    assert dice > 0.9, f"Dice {dice:.3f} after {step} steps"


# --- configs -----------------------------------------------------------------------------------


def resolved(node: DictConfig) -> DictConfig:
    """A config node with its interpolations resolved, so it builds on its own."""
    return OmegaConf.create(OmegaConf.to_container(node, resolve=True))


def test_lgg_recipe_trains_the_backbone_at_a_tenth_of_the_rate_without_decay_on_norms_and_embeddings() -> None:
    cfg = compose_train(["experiment=maskdino_lgg"])
    with torch.device("meta"):
        module = torch.nn.ModuleDict({"net": build_net(resolved(cfg.model))})  # names as the LightningModule's: net.*
    optimizer = build_optimizer(instantiate(cfg.optimizer), module)
    options = {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}
    net = module["net"]
    assert options[id(net.backbone.conv1.weight)] == pytest.approx((1e-5, 0.05))
    assert options[id(net.backbone.bn1.weight)] == pytest.approx((1e-5, 0.0))
    assert options[id(net.decoder.class_head.weight)] == pytest.approx((1e-4, 0.05))
    assert options[id(net.decoder.norm.weight)] == pytest.approx((1e-4, 0.0))
    assert options[id(net.label_embedding.weight)] == pytest.approx((1e-4, 0.0))
    assert len(options) == sum(1 for _ in net.parameters())


def test_explain_layer_names_the_per_pixel_embedding_map() -> None:
    cfg = compose_train(["model=maskdino"])
    net = build_net(resolved(cfg.model))
    layer = net.get_submodule(cfg.model.explain_layer)
    seen = []
    layer.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.no_grad():
        net.eval()(torch.zeros(1, 1, 64, 64))
    assert seen == [(1, 128, 16, 16)]


@pytest.mark.slow
def test_trains_end_to_end_through_lesionseg_train(train_config) -> None:
    cfg = train_config(
        "model=maskdino",
        "loss=mask_set",
        "debug=limit",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.num_training=6",
        "data.num_testing=1",
        "data.volume_shape=[64,64,8]",
        "data.num_workers=0",
        "data.batch_size=4",
        "model.hidden_dim=32",
        "model.num_heads=2",
        "model.feedforward_dim=64",
        "model.encoder_layers=1",
        "model.decoder_layers=2",
        "loss.num_points=256",
        "logger=csv",
    )
    _, summary = train(cfg)
    assert summary["status"] == "ok" and summary["model"] == "maskdino"
    assert summary["epochs"] == 1
    assert summary["test"]["dice"] >= 0.0
