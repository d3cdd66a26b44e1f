"""What the framework costs per training step (`python -m lesionseg.bench overhead [options] [overrides]`).

The same network, batches, optimizer (with its parameter groups) and loss train through the
project's `SegmentationModule` + Lightning `Trainer` and through a bare PyTorch loop (forward, loss,
zero_grad, backward, step), interleaved step by step in one process: a callback runs the bare step
beside each Trainer step, before it on even batches and after it on odd ones, so a machine whose load
changes slows both alike. It prints images/s of each, their ratio and the framework's overhead
(1 - ratio).

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
from collections.abc import Mapping, Sequence
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


class BareLoop:
    """The same training step without the framework, on the module's own network (so both loops step
    the same weights): forward, loss, zero_grad, backward, and a step of its own optimizer built from
    the run's optimizer config (parameter groups included)."""

    def __init__(self, cfg: DictConfig, module: SegmentationModule) -> None:
        self.net = module.net
        self.loss = module.loss
        self.optimizer = build_optimizer(hydra.utils.instantiate(cfg.optimizer), module)
        self.layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.bf16 = str(cfg.trainer.precision).startswith("bf16")

    def step(self, batch: Batch) -> float:
        """Seconds of one training step on `batch`."""
        device = next(self.net.parameters()).device
        synchronize(device)
        start = time.perf_counter()
        image = batch["image"].to(device).contiguous(memory_format=self.layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(self.net(image), batch["mask"].to(device))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        synchronize(device)
        return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Interleaved(L.Callback):
    """Runs a bare step beside every framework step, before it on even batches and after it on odd
    ones, so both meet the same machine load; records (bare, framework) seconds per batch.

    The framework's share of a batch is the wall time from its `on_train_batch_start` to the next
    one's (everything the Trainer and the module do for it: fetching, hooks, the training step,
    logging) minus the bare step run inside that interval; the last batch's ends at the epoch's end,
    before the once-per-epoch work (epoch metrics, scheduler step), which a real epoch amortises.
    """

    def __init__(self, bare: BareLoop) -> None:
        self.bare = bare
        self.steps: list[tuple[float, float]] = []
        self.started: float | None = None
        self.bare_seconds = 0.0

    def close(self) -> None:
        if self.started is not None:
            self.steps.append((self.bare_seconds, time.perf_counter() - self.started - self.bare_seconds))

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.close()
        self.started = time.perf_counter()
        self.bare_seconds = self.bare.step(batch) if batch_idx % 2 == 0 else 0.0

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx % 2 == 1:
            self.bare_seconds += self.bare.step(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.close()  # before the module's epoch-end metrics: once per epoch, not per step
        self.started = None


def measure(cfg: DictConfig, steps: int, warmup: int) -> tuple[list[tuple[float, float]], int]:
    """(bare, framework) seconds of each timed batch (warm-up batches dropped), and the batch size."""
    L.seed_everything(cfg.seed, workers=True)
    batches = training_batches(cfg, warmup + steps)
    module = build_module(cfg)
    with torch.no_grad():
        if isinstance(module.net(batches[0]["image"][:1]), Mapping):
            raise SystemExit(f"error: model={cfg.model_name} returns a dict of outputs; the bare loop compares plain-logit models only")
    precision = str(cfg.trainer.precision)
    if precision not in ("32-true", "32", "bf16-mixed"):
        raise SystemExit(f"error: trainer.precision={precision}: the bare loop reproduces 32-true and bf16-mixed only")
    if cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available()):
        module.to("cuda")
    interleaved = Interleaved(BareLoop(cfg, module))
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
        callbacks=[interleaved],
    )
    trainer.fit(module, train_dataloaders=loader(batches))
    return interleaved.steps[warmup:], len(batches[0]["image"])


def result_table(cfg: DictConfig, steps: list[tuple[float, float]], batch_size: int) -> Table:
    bare, framework = (sum(seconds) for seconds in zip(*steps))
    images = batch_size * len(steps)
    per_step = statistics.median(b / f for b, f in steps)
    table = Table(title=f"Framework overhead: model={cfg.model_name} data={cfg.data.name}, {len(steps)} interleaved steps of batch {batch_size}")
    for column in ("loop", "images/s", "ratio to bare", "median step ratio", "overhead"):
        table.add_column(column, justify="left" if column == "loop" else "right")
    table.add_row("bare PyTorch", f"{images / bare:.2f}", "1.000", "1.000", "-")
    table.add_row("SegmentationModule + Trainer", f"{images / framework:.2f}", f"{bare / framework:.3f}", f"{per_step:.3f}", f"{1 - bare / framework:+.1%}")
    return table


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lesionseg.bench overhead",
        description="images/s of the same training steps through the LightningModule + Trainer and a bare PyTorch loop, interleaved.",
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each loop (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each loop first (default 3)")
    parser.add_argument("overrides", nargs="*", help="run config overrides, e.g. model=unet data.batch_size=8 (default model and data: unet_small, synthetic)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("error: --steps must be >= 1, --warmup >= 0")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*but have no `val_dataloader`.*")
    cfg = run_config(args.overrides)
    console = Console()
    console.width = max(console.width, 120)  # piped output defaults to 80 columns: too narrow for the table
    steps, batch_size = measure(cfg, args.steps, args.warmup)
    console.print(result_table(cfg, steps, batch_size))
    console.print(
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, lightning {L.__version__}; "
        "the ratio is fair under load (both sides share it), the absolute rates are not."
    )
