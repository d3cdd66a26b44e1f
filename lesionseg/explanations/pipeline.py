"""The per-scan loop of `python -m lesionseg.explain`: predict, pick slices, explain, score, write.

For every scan: decode and preprocess it exactly as the checkpoint's pipeline does, predict the
lesion with the members' full inference path (TTA, clean-up, classifier gate; an ensemble averages
its members' probabilities), explain the `explain.num_slices` slices with the largest predicted
lesion (or take the empty-prediction fallback, see `targets`), score every method's maps (`scores`),
optionally run the randomisation sanity check (`sanity`), and write the maps in the scan's geometry
(`writer`), one overlay figure (`figures`) and the rows of `explanations.csv`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from lesionseg.config import UsageError, wandb_offline
from lesionseg.data.cases import CaseArrays, DataError
from lesionseg.data.scans import Scan, input_scans, layout_scans, voxel_volume_ml
from lesionseg.data.validate import checked
from lesionseg.explanations.figures import overlay_figure
from lesionseg.explanations.methods import (
    ExplainedModel,
    LimeSettings,
    MethodSettings,
    OcclusionSettings,
    check_methods,
    compute_maps,
)
from lesionseg.explanations.models import (
    ExplainedOutput,
    MeanProbabilityEnsemble,
    Member,
    explain_layer,
    find_layer,
    load_predictor,
)
from lesionseg.explanations.sanity import cascading_randomisation
from lesionseg.explanations.scores import plausibility_scores, road_scores
from lesionseg.explanations.targets import PROBABILITY, Target, slice_targets
from lesionseg.explanations.writer import write_saliency
from lesionseg.inference.predictor import Predictor
from lesionseg.module import split_output
from lesionseg.outputs import claim_output_dir
from lesionseg.summary import write_summary

SPLITS = ("train", "val", "test")


def output_folder(checkpoint: Path, requested: str | None) -> Path:
    """The project's output-folder policy: a named folder must be new or empty; the default
    `<run folder>/explain/<timestamp>/` is made unique."""
    if requested:
        return claim_output_dir(requested, what="output_dir")
    return claim_output_dir(checkpoint.resolve().parent.parent / "explain" / time.strftime("%Y-%m-%d_%H-%M-%S"), unique=True)


@dataclass
class Explainer:
    """Everything the per-scan loop needs: members, what to explain, how, and where to write."""

    predictor: Predictor
    members: list[Member]
    layer_names: list[str]
    methods: list[str]
    output: str
    category: int
    num_slices: int
    road_percentiles: list[int]
    sanity_steps: int | None
    settings: MethodSettings
    device: torch.device
    folder: Path
    seconds: dict[str, list[float]] = field(default_factory=dict)

    @property
    def multiclass(self) -> bool:
        return self.members[0].module.num_classes > 1

    def explained(self, modules: Sequence[Any] | None = None) -> list[ExplainedModel]:
        """The members (or copies of them) as the methods see them."""
        modules = modules or [member.module for member in self.members]
        return [ExplainedModel(ExplainedOutput(module, self.output), module.net.get_submodule(name), name) for module, name in zip(modules, self.layer_names)]

    def ensemble(self) -> MeanProbabilityEnsemble:
        return MeanProbabilityEnsemble([model.model for model in self.explained()], self.multiclass)


def as_list(value: Any) -> list[str]:
    """A config value that is one item or a list (`a`, `[a, b]`, `a,b`) as a list of strings."""
    if value is None:
        return []
    if isinstance(value, ListConfig | list | tuple):
        return [str(item) for item in value]
    return [item.strip() for item in str(value).split(",") if item.strip()]


def decode(scan: Scan, run_config: DictConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """The scan's image (Z, in_channels, H, W) float32, validated as in training, and its mask if labelled."""
    data = run_config.data
    arrays, _ = checked(scan.case, scan.decode() if scan.case.labelled else CaseArrays(image=scan.decode().image, mask=None), num_classes=data.num_classes)
    image = arrays.image
    if image.shape[1] == 1 < data.in_channels:
        image = np.repeat(image, data.in_channels, axis=1)
    if image.shape[1] != data.in_channels:
        raise DataError(f"{scan.case.image[0]}: {image.shape[1]} channels, but the model takes {data.in_channels}")
    return image, arrays.mask


def explain_scan(scan: Scan, explainer: Explainer) -> tuple[list[dict], list[dict], Path]:
    """Explain one scan; write its maps and overlay; return its csv rows, sanity rows and figure."""
    image, truth = decode(scan, explainer.members[0].config)
    size = (int(image.shape[-2]), int(image.shape[-1]))
    predictor = explainer.predictor
    preprocess = predictor.preprocess
    model_image = predictor.model_input(image, scan.case.image[0])
    model_truth = None if truth is None else preprocess(image, truth)[1]
    probabilities, cls_probability = predictor.model_space(model_image)
    mask = predictor.finish(probabilities, cls_probability, voxel_volume_ml(scan))
    probability = probabilities[:, explainer.category] if explainer.multiclass else probabilities[:, 0]
    lesion_class = explainer.category if explainer.multiclass else 1
    predicted = (mask == lesion_class).astype(np.uint8)
    chosen, kind = slice_targets(predicted, probability, explainer.num_slices)
    weights = probability[chosen] if kind == PROBABILITY else predicted[chosen].astype(np.float32)
    channel = explainer.category if explainer.multiclass else 0
    targets = [Target(w, kind, explainer.output, channel, explainer.multiclass) for w in weights]
    images = torch.from_numpy(np.ascontiguousarray(model_image[chosen])).to(explainer.device)
    lesion = None if model_truth is None else (model_truth[chosen] == lesion_class if explainer.multiclass else model_truth[chosen] > 0)
    ensemble = explainer.ensemble()
    rows, sanity_rows, maps = [], [], {}
    for method in explainer.methods:
        started = time.perf_counter()
        maps[method] = compute_maps(method, explainer.explained(), images, targets, explainer.settings)
        seconds = time.perf_counter() - started
        explainer.seconds.setdefault(method, []).extend([seconds / len(chosen)] * len(chosen))
        scores = road_scores(ensemble, images, maps[method], targets, explainer.road_percentiles, explainer.settings.seed)
        scores |= plausibility_scores(maps[method], predicted[chosen], lesion)
        row = {
            "subject": scan.case.subject,
            "source": str(scan.case.image[0]),
            "status": "ok",
            "method": method,
            "target": kind,
            "fallback": kind == PROBABILITY,
            "output": explainer.output,
            "layer": ";".join(explainer.layer_names) if method in ("gradcam", "gradcampp") else "",
            "slices": ";".join(str(z) for z in chosen),
            "seconds_per_slice": seconds / len(chosen),
            **scores,
        }
        if explainer.sanity_steps and method != "random":

            def sanity_map(copies: Sequence[Any], method: str = method) -> np.ndarray:
                return compute_maps(method, explainer.explained(copies), images[:1], targets[:1], explainer.settings)[0]

            steps = cascading_randomisation(
                [member.module for member in explainer.members],
                sanity_map,
                maps[method][0],
                explainer.sanity_steps,
                explainer.settings.seed,
            )
            sanity_rows += [{"subject": scan.case.subject, "method": method, "slice": chosen[0], **step} for step in steps]
            row["sanity_ssim"] = steps[-1]["ssim"]
        rows.append(row)
    restored = {}
    for method, values in maps.items():
        volume = np.zeros(predicted.shape, dtype=np.float32)
        volume[chosen] = values
        restored[method] = preprocess.restore(volume, size, cv2.INTER_LINEAR)
        files = write_saliency(scan, method, restored[method], chosen, explainer.folder)
        for row in rows:
            if row["method"] == method:
                row["saliency"] = str(files[0])
    scan_prediction = preprocess.restore(predicted, size)
    title = f"{scan.case.subject}: {explainer.output} output" + ("  [empty prediction: probability-map fallback target]" if kind == PROBABILITY else "")
    figure = overlay_figure(
        title,
        image[chosen].mean(axis=1),
        scan_prediction[chosen],
        None if truth is None else truth[chosen],
        {method: restored[method][chosen] for method in maps},
        [f"slice {z}" for z in chosen],
        explainer.folder / f"{scan.case.subject}_overlay.png",
    )
    for row in rows:
        row["overlay"] = str(figure)
    return rows, sanity_rows, figure


def find_scans(cfg: DictConfig, run_config: DictConfig) -> list[Scan]:
    """The scans of `input=`, or the subjects of `split=` of the checkpoint's dataset (with labels)."""
    if cfg.get("input") and cfg.get("split"):
        raise UsageError("give input=<scan or folder> or split=train|val|test, not both")
    if cfg.get("input"):
        return input_scans(Path(str(cfg.input)), run_config.data.in_channels)
    split = cfg.get("split")
    if not split:
        raise UsageError("input=<scan or folder> or split=train|val|test (with data.root) is required")
    if split not in SPLITS:
        raise UsageError(f"split={split}: use one of {', '.join(SPLITS)}")
    datamodule = hydra.utils.instantiate(run_config.data, augment=None)
    datamodule.setup("fit")
    subjects = set(datamodule.split.get(split) or [])
    if not subjects:
        raise UsageError(f"split={split}: the {split} split of data {run_config.data.get('name')} holds no subjects")
    return layout_scans([case for case in datamodule.labelled_cases() if case.subject in subjects], datamodule.layout)


def build_explainer(cfg: DictConfig) -> tuple[Explainer, list[Path]]:
    """Members, layers and settings from the explain config (every check before any scan is read)."""
    methods = check_methods(as_list(cfg.method))
    try:
        paths = [Path(path).expanduser() for path in as_list(cfg.ckpt_path)]
    except Exception as error:  # omegaconf's MissingMandatoryValue for ckpt_path: ???
        raise UsageError("ckpt_path=<checkpoint file> (or a list of them) is required") from error
    if not paths:
        raise UsageError("ckpt_path=<checkpoint file> (or a list of them) is required")
    if str(cfg.device) not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device={cfg.device}: use auto, cpu or cuda")
    predictor, members = load_predictor(paths, str(cfg.device), int(cfg.batch_size))
    device = predictor.device
    options = cfg.explain
    layer_names = [explain_layer(member, options.layer) for member in members]
    for member, name in zip(members, layer_names):
        find_layer(member, name)
    multiclass = members[0].module.num_classes > 1
    category = int(options.category) if options.category is not None else (1 if multiclass else 0)
    explainer = Explainer(
        predictor=predictor,
        members=members,
        layer_names=layer_names,
        methods=methods,
        output=str(options.output),
        category=category,
        num_slices=max(int(options.num_slices), 1),
        road_percentiles=[int(p) for p in options.road_percentiles],
        sanity_steps=int(options.sanity_steps) if cfg.sanity else None,
        settings=MethodSettings(seed=int(options.seed), lime=LimeSettings(**options.lime), occlusion=OcclusionSettings(**options.occlusion)),
        device=device,
        folder=Path(),
    )
    ExplainedOutput(members[0].module, explainer.output)  # checks explain.output
    if explainer.output == "cls":
        probe = torch.zeros((1, members[0].config.data.in_channels, 32, 32), device=device)
        with torch.no_grad():
            if split_output(members[0].module(probe))[1] is None:
                raise UsageError("explain.output=cls: this model has no classifier head")
    return explainer, paths


def uses_wandb(cfg: DictConfig) -> bool:
    """True when the `logger` group chosen (wandb, many) holds a wandb logger."""
    loggers = cfg.get("logger") or {}
    return any("Wandb" in str(node.get("_target_", "")) for node in loggers.values() if isinstance(node, DictConfig))


def log_to_wandb(cfg: DictConfig, folder: Path, figures: list[Path], summary: dict) -> None:
    """`logger=wandb`: one run (offline unless WANDB_MODE=online) with every overlay as an image."""
    import wandb

    run = wandb.init(project="lesionseg", job_type="explain", dir=str(folder), mode="offline" if wandb_offline() else "online", config=summary)
    run.log({f"explain/{figure.stem}": wandb.Image(str(figure), caption=figure.stem) for figure in figures})
    run.finish()


def explain(cfg: DictConfig) -> dict[str, Any]:
    """Explain every scan; write maps, overlays, explanations.csv, explain.json; return the summary."""
    started = time.perf_counter()
    explainer, paths = build_explainer(cfg)
    data_overrides = {str(key): value for key, value in cfg.data.items() if value is not None}
    run_config = OmegaConf.merge(explainer.members[0].config, {"data": data_overrides})
    assert isinstance(run_config, DictConfig)
    scans = find_scans(cfg, run_config)
    explainer.folder = output_folder(paths[0], str(cfg.output_dir) if cfg.get("output_dir") else None)
    rows: list[dict] = []
    sanity_rows: list[dict] = []
    figures: list[Path] = []
    for scan in tqdm(scans, desc="explain", unit="scan", disable=None):
        try:
            scan_rows, scan_sanity, figure = explain_scan(scan, explainer)
        except DataError as error:
            print(f"error: {error}", file=sys.stderr)
            rows.append({"subject": scan.case.subject, "status": f"failed: {error}"})
            continue
        rows += scan_rows
        sanity_rows += scan_sanity
        figures.append(figure)
    table = pd.DataFrame(rows)
    table.to_csv(explainer.folder / "explanations.csv", index=False)
    if sanity_rows:
        pd.DataFrame(sanity_rows).to_csv(explainer.folder / "sanity.csv", index=False)
    seconds = {method: float(np.mean(values)) for method, values in explainer.seconds.items()}
    ok = table[table["status"] == "ok"] if len(table) else table
    summary = {
        "checkpoints": [str(path) for path in paths],
        "models": [member.config.get("model_name") for member in explainer.members],
        "layers": explainer.layer_names,
        "output": explainer.output,
        "methods": explainer.methods,
        "settings": OmegaConf.to_container(cfg.explain, resolve=True),
        "sanity": bool(cfg.sanity),
        "scans": len(scans),
        "failed": len(scans) - len(figures),
        "fallback_subjects": sorted(set(ok.loc[ok["fallback"].astype(bool), "subject"])) if len(ok) else [],
        "seconds_per_slice": seconds,
        "mean_scores": json.loads(ok.groupby("method").mean(numeric_only=True).to_json()) if len(ok) else {},
        "device": str(explainer.device),
        "wall_time_s": time.perf_counter() - started,
        "output_dir": str(explainer.folder),
    }
    write_summary(explainer.folder / "explain.json", summary)
    if uses_wandb(cfg) and figures:
        log_to_wandb(cfg, explainer.folder, figures, summary)
    print("seconds per slice: " + ", ".join(f"{method} {value:.2f}" for method, value in seconds.items()))
    print(f"explained {len(figures)} of {len(scans)} scans into {explainer.folder}")
    return summary
