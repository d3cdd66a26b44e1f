"""Measure the catalog's models: build each from its Hydra config, count parameters and MACs, and
time forward + backward passes (`python -m lesionseg.bench models`).

Parameter and MAC counts come from `lesionseg.models.measure`, shared with the model table
(`python -m lesionseg.models`), which prints them against the papers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from lesionseg.factory import build_net
from lesionseg.models.catalog import CATALOG, PaperFigure
from lesionseg.models.measure import count_parameters, model_configs

DEFAULT_SIZE = (224, 192)
"""The X-Net crop of ATLAS: quick on CPU and the size most experiments train at."""


def segmentation_logits(output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """The (B, K, H, W) logits of any model output (plain tensor or dict with "seg")."""
    return output["seg"] if isinstance(output, dict) else output


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def native_cpu_bfloat16() -> bool:
    """True when the CPU computes bfloat16 natively; elsewhere bf16 autocast is an emulation many
    times slower than fp32, which is not worth timing (and takes long enough to look like a hang)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def rate_cell(rate: float | None, baseline: float | None, index: int) -> str:
    """One table cell: images/s, and the ratio against the first mode after the first column."""
    if rate is None:
        return "n/a"
    return f"{rate:.1f}" + (f" ({rate / baseline:.1f}x)" if index and baseline else "")


def images_per_second(
    model: nn.Module,
    in_channels: int,
    input_size: tuple[int, int],
    batch_size: int,
    steps: int,
    warmup: int,
    device: torch.device,
    mode: str = "fp32",
) -> float:
    """Training-mode forward + backward throughput on random images; warm-up steps not timed.

    `mode`: "fp32" (contiguous), "channels_last" (fp32, channels_last layout) or "bf16"
    (channels_last under bf16 autocast, what `trainer.precision=bf16-mixed` does).
    """
    layout = torch.contiguous_format if mode == "fp32" else torch.channels_last
    model.to(device).to(memory_format=layout).train()
    images = torch.randn(batch_size, in_channels, *input_size, device=device).contiguous(memory_format=layout)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            output = model(images)
        loss = segmentation_logits(output).float().mean()
        if isinstance(output, dict) and "cls" in output:
            loss = loss + output["cls"].float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


def parse_size(text: str) -> tuple[int, int]:
    """'224x192' -> (224, 192)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 224x192, got {text!r}") from None
    return height, width


def select(names: str | None) -> list[PaperFigure]:
    """Catalog entries named in a comma-separated list (all when None); unknown names are an error."""
    if names is None:
        return list(CATALOG)
    by_name = {entry.config: entry for entry in CATALOG}
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {', '.join(unknown)}; available: {', '.join(by_name)}")
    return [by_name[name] for name in wanted]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lesionseg.bench models",
        description="Forward + backward images/s of each catalog model (training mode, random images).",
    )
    parser.add_argument("--models", help="comma-separated catalog configs (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="HxW (default 224x192)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per model (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), action="append", help="repeatable (default: cpu, and cuda if available)")
    parser.add_argument("--modes", default="fp32,channels_last,bf16", help="comma-separated: fp32, channels_last, bf16 (vs fp32 in the same run)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    devices = args.device or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked but no CUDA device is available")
    entries = select(args.models)
    height, width = args.size
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(modes) - {"fp32", "channels_last", "bf16"})
    if unknown:
        raise SystemExit(f"error: unknown mode(s) {', '.join(unknown)}; available: fp32, channels_last, bf16")
    table = Table(title=f"Forward + backward images/s, batch {args.batch_size}, {height}x{width} (x = vs the first mode)")
    for column in ("model", "params", *(f"{device} {mode}" for device in devices for mode in modes)):
        table.add_column(column, justify="left" if column == "model" else "right")
    console = Console()
    for entry, model_config in model_configs(entries):
        model = build_net(model_config)  # without metadata keys such as explain_layer
        cells = []
        for device in devices:
            rates = [
                images_per_second(model, entry.in_channels, args.size, args.batch_size, args.steps, args.warmup, torch.device(device), mode)
                if device == "cuda" or mode != "bf16" or native_cpu_bfloat16()
                else None
                for mode in modes
            ]
            cells += [rate_cell(rate, rates[0], index) for index, rate in enumerate(rates)]
        table.add_row(entry.config, f"{count_parameters(model):,}", *cells)
        console.print(f"{entry.config}: " + ", ".join(f"{mode} {cell}" for mode, cell in zip(modes * len(devices), cells)))  # progress
        del model
    console.print(table)
    if "bf16" in modes and "cpu" in devices and not native_cpu_bfloat16():
        console.print("cpu bf16: n/a, this CPU has no native bfloat16 (AVX-512-BF16 or AMX); autocast would emulate it.")
    console.print(
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}. Re-run with more steps for stabler "
        f"figures, e.g.: python -m lesionseg.bench models --models {entries[0].config} --steps 20 --warmup 3 "
        f"--batch-size {args.batch_size} --size {height}x{width}"
    )
