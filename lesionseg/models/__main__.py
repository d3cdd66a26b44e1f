"""`python -m lesionseg.models`: every catalog model config against its paper.

For each `conf/model/<config>.yaml` in `lesionseg.models.catalog.CATALOG`: trainable parameters
(for the channels and classes the paper counted with), MACs of one image at the paper's input
size, the paper's parameter figure and the relative difference. Models are built on the meta
device (shapes only, no memory, no compute), so the table is quick even for 50M-parameter nets.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from lesionseg.factory import build_net
from lesionseg.models.catalog import CATALOG, PaperFigure
from lesionseg.models.measure import count_parameters, model_configs, multiply_accumulates


def difference(parameters: int, entry: PaperFigure) -> str:
    """Relative difference to the paper's figure, marked ok / OFF against the entry's tolerance."""
    if entry.target_params is None:
        return "-"
    relative = (parameters - entry.target_params) / entry.target_params
    verdict = "ok" if abs(relative) <= entry.tolerance else "OFF"
    return f"{relative:+.2%} {verdict}"


def model_table() -> Table:
    table = Table(title="Model configs vs papers (trainable parameters; MACs of one image)")
    for column in ("config", "in/out", "input", "params", "MACs (G)", "paper", "diff"):
        table.add_column(column, justify="left" if column == "config" else "right", no_wrap=True)
    table.add_column("source")
    for entry, model_config in model_configs(CATALOG):
        with torch.device("meta"):
            model = build_net(model_config)  # without metadata keys such as explain_layer
            macs = multiply_accumulates(model, entry.in_channels, entry.input_size)
        parameters = count_parameters(model)
        height, width = entry.input_size
        table.add_row(
            entry.config,
            f"{entry.in_channels}/{entry.num_classes}",
            f"{height}x{width}",
            f"{parameters:,}",
            f"{macs / 1e9:.3f}",
            "-" if entry.target_params is None else f"{entry.target_params:,}",
            difference(parameters, entry),
            entry.source,
        )
    return table


def main() -> None:
    console = Console()
    console.width = max(console.width, 150)  # piped output defaults to 80 columns: too narrow for the rows
    console.print(model_table())


if __name__ == "__main__":
    main()
