"""What the framework costs per training step (`python -m lesionseg.bench overhead [options] [overrides]`).

The same network, batches, optimizer (with its parameter groups) and loss train through the
project's `SegmentationModule` + Lightning `Trainer` and through a bare PyTorch loop (forward, loss,
zero_grad, backward, step), interleaved in one process: each round runs both, in alternating order,
so a machine whose load changes during the run slows both alike. It prints images/s of each, their
ratio and the framework's overhead (1 - ratio).

The batches come from the run config's training loader (default: `model=unet_small`, `data=synthetic`),
read once into memory, so neither side pays for data loading or augmentation (`bench data` measures
those). The Trainer runs as `train` builds it, minus what is not a training step: no validation, no
checkpoints, no progress bar; a CSV logger writes the logged values every `trainer.log_every_n_steps`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hydra
import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from lesionseg.config import CONF_DIR, register_resolvers
from lesionseg.factory import build_module
from lesionseg.module import SegmentationModule
from lesionseg.optim import build_optimizer

Batch = dict[str, Any]


def run_config(overrides: Sequence[str]) -> DictConfig:
    """`conf/train.yaml` composed with `overrides`, outputs in a throw-away folder."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = tempfile.mkdtemp(prefix="lesionseg-overhead-")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)  # for ${hydra:...} interpolations (model_name, output folder)
    return cfg


def training_batches(cfg: DictConfig, count: int) -> list[Batch]:
    """The first `count` batches of the run's training loader, in memory (cycled if the loader is shorter)."""
    augment = hydra.utils.instantiate(cfg.augment) if cfg.get("augment") else None
    datamodule = hydra.utils.instantiate(cfg.data, augment=augment, num_workers=0, persistent_workers=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches: list[Batch] = []
    while len(batches) < count:
        for batch in datamodule.train_dataloader():
            batches.append({"image": batch["image"], "mask": batch["mask"]})
            if len(batches) == count:
                break
    return batches


def loader(batches: list[Batch]) -> DataLoader:
    """A loader that yields the prepared batches as they are (no collation, no workers)."""
    return DataLoader(batches, batch_size=None, shuffle=False)  # type: ignore[arg-type]


class StepTimer(L.Callback):
    """Seconds from the start of training batch `warmup` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.end - self.start


def framework_seconds(cfg: DictConfig, module: SegmentationModule, batches: list[Batch], warmup: int) -> float:
    """One epoch over `batches` through the Trainer; seconds of the steps after `warmup`."""
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        logger=CSVLogger(cfg.paths.output_dir, name="overhead"),
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader(batches))
    return timer.seconds


def bare_seconds(cfg: DictConfig, module: SegmentationModule, batches: list[Batch], warmup: int) -> float:
    """The same steps in a plain loop on the module's network, loss and optimizer config."""
    device = next(module.parameters()).device
    net, loss_function = module.net.train(), module.loss
    optimizer = build_optimizer(hydra.utils.instantiate(cfg.optimizer), module)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    start = 0.0
    for index, batch in enumerate(loader(batches)):
        if index == warmup:
            start = time.perf_counter()
        image = batch["image"].to(device).contiguous(memory_format=layout)
        mask = batch["mask"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            output = net(image)
            loss = loss_function(output, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(cfg: DictConfig, steps: int, warmup: int, rounds: int, report: Callable[[str], None] = print) -> list[tuple[float, float]]:
    """(bare, framework) images/s of each round; rounds alternate which side runs first."""
    L.seed_everything(cfg.seed, workers=True)
    batches = training_batches(cfg, warmup + steps)
    images = sum(len(batch["image"]) for batch in batches[warmup:])
    module = build_module(cfg)
    with torch.no_grad():
        if isinstance(module.net(batches[0]["image"][:1]), Mapping):
            raise SystemExit(f"error: model={cfg.model_name} returns a dict of outputs; the bare loop compares plain-logit models only")
    if cfg.trainer.accelerator not in ("cpu", "auto") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available()):
        module.to("cuda")
    precision = str(cfg.trainer.precision)
    if precision not in ("32-true", "32", "bf16-mixed"):
        raise SystemExit(f"error: trainer.precision={precision}: the bare loop reproduces 32-true and bf16-mixed only")
    rates = []
    for index in range(rounds):
        sides = [("bare", bare_seconds), ("framework", framework_seconds)]
        seconds = {name: run(cfg, module, batches, warmup) for name, run in (sides if index % 2 == 0 else sides[::-1])}
        rates.append((images / seconds["bare"], images / seconds["framework"]))
        report(f"round {index + 1}/{rounds}: bare {rates[-1][0]:.2f} img/s, framework {rates[-1][1]:.2f} img/s, ratio {rates[-1][1] / rates[-1][0]:.3f}")
    return rates


def result_table(cfg: DictConfig, rates: list[tuple[float, float]], steps: int, batch_size: int) -> Table:
    bare = statistics.median(rate for rate, _ in rates)
    framework = statistics.median(rate for _, rate in rates)
    ratios = [framework_rate / bare_rate for bare_rate, framework_rate in rates]
    table = Table(title=f"Framework overhead: model={cfg.model_name} data={cfg.data.name}, {steps} timed steps of batch {batch_size} x {len(rates)} rounds")
    for column in ("loop", "images/s (median)", "ratio to bare (median of rounds)", "overhead"):
        table.add_column(column, justify="left" if column == "loop" else "right")
    table.add_row("bare PyTorch", f"{bare:.2f}", "1.000", "-")
    ratio = statistics.median(ratios)
    table.add_row("SegmentationModule + Trainer", f"{framework:.2f}", f"{ratio:.3f}", f"{1 - ratio:+.1%}")
    return table


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lesionseg.bench overhead",
        description="images/s of the same training steps through the LightningModule + Trainer and a bare PyTorch loop, interleaved.",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and side (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, each round (default 2)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, alternating which side runs first (default 4)")
    parser.add_argument("overrides", nargs="*", help="run config overrides, e.g. model=unet data.batch_size=8 (default model and data: unet_small, synthetic)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        raise SystemExit("error: --steps and --rounds must be >= 1, --warmup >= 0")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*but have no `val_dataloader`.*")
    cfg = run_config(args.overrides)
    console = Console()
    console.width = max(console.width, 120)  # piped output defaults to 80 columns: too narrow for the table
    rates = measure(cfg, args.steps, args.warmup, args.rounds, report=console.print)
    console.print(result_table(cfg, rates, args.steps, cfg.data.batch_size))
    console.print(
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, lightning {L.__version__}; "
        "the ratio is fair under load (both sides share it), the absolute rates are not."
    )
