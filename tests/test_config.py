"""Every option of every config group composes, and the config contract holds."""

from __future__ import annotations

import functools

import hydra
import pytest
import torch
from hydra_helpers import compose_train
from omegaconf import OmegaConf

from lesionseg.config import CONF_DIR, UsageError, available_options, check_overrides

GROUPS = ("model", "data", "augment", "optimizer", "scheduler", "loss", "trainer", "logger", "callbacks", "debug", "experiment")


def all_options() -> list[tuple[str, str]]:
    return [(group, option) for group in GROUPS for option in available_options(group)]


@pytest.mark.parametrize(("group", "option"), all_options(), ids=lambda value: str(value))
def test_every_option_composes_and_resolves(group: str, option: str, tmp_path) -> None:
    cfg = compose_train([f"{group}={option}"], tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["data"]["batch_size"] > 0
    assert "_target_" in container["model"]


def test_config_contract(tmp_path) -> None:
    cfg = compose_train([], tmp_path)
    optimizer = hydra.utils.instantiate(cfg.optimizer)
    assert isinstance(optimizer, functools.partial)
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(optimizer(params=params), torch.optim.Optimizer)
    scheduler = hydra.utils.instantiate(cfg.scheduler)
    assert isinstance(scheduler, functools.partial)
    loss = hydra.utils.instantiate(cfg.loss)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 8, 8) > 0.5).long()
    assert loss(logits, target).ndim == 0
    assert cfg.data.root is None or isinstance(cfg.data.root, str)
    assert (CONF_DIR / "train.yaml").is_file()


LOSS_CASES = [(name, classes) for name in available_options("loss") for classes in (1, 3) if (name, classes) != ("weighted_bce", 3)]


@pytest.mark.parametrize(("loss_name", "num_classes"), LOSS_CASES)
def test_losses_decrease_towards_the_target(loss_name: str, num_classes: int, tmp_path) -> None:
    cfg = compose_train([f"loss={loss_name}", f"data.num_classes={num_classes}"], tmp_path)
    if loss_name == "weighted_ce" and num_classes == 3:
        cfg.loss.weights = [1.0, 2.0, 3.0]
    loss = hydra.utils.instantiate(cfg.loss)
    torch.manual_seed(0)
    target = torch.randint(0, num_classes + (num_classes == 1), (2, 16, 16))
    logits = torch.zeros(2, num_classes, 16, 16, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    first = loss(logits, target)
    for _ in range(30):
        optimizer.zero_grad()
        value = loss(logits, target)
        value.backward()
        optimizer.step()
    assert loss(logits, target).item() < 0.5 * first.item()


def test_unknown_group_option_lists_available() -> None:
    with pytest.raises(UsageError, match=r"unknown model 'nope'.*available: .*unet"):
        check_overrides(["model=nope"])
    with pytest.raises(UsageError, match="unknown data 'x'"):
        check_overrides(["-m", "data=synthetic,x"])
    check_overrides(["model=unet_small", "trainer.max_epochs=3", "experiment=null"])


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ModuleNotFoundError("No module named 'optuna'", name="optuna"), "optuna is not installed: pip install 'lesionseg[sweeps]'"),
        (ModuleNotFoundError("Requirement 'wandb>=0.12.10' not met."), "wandb is not installed: pip install 'lesionseg[wandb]'"),
        (
            ModuleNotFoundError("No module named 'hydra_plugins.hydra_submitit_launcher'", name="hydra_plugins.hydra_submitit_launcher.x"),
            "hydra_plugins.hydra_submitit_launcher is not installed: pip install 'lesionseg[slurm]'",
        ),
        (ModuleNotFoundError("No module named 'numpy'", name="numpy"), None),
        (ValueError("wandb"), None),
    ],
)
def test_a_missing_optional_package_names_its_extra(error: BaseException, line: str | None) -> None:
    from lesionseg.config import missing_extra

    assert missing_extra(error) == line
