"""A checkpoint is data, never code: hostile and modified checkpoints are refused by every entry point.

Each hostile file is first shown to be live (its payload runs under an unsafe load or a plain
`hydra.utils.instantiate`), then refused by `load_checkpoint`, `evaluate`, `predict` and
`train ckpt_path=...` with exit code 2 and one line, while a planted marker stays absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import nibabel as nib
import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra_helpers import compose_train
from omegaconf import OmegaConf

from lesionseg.checkpoints import CONFIG_KEY, HASH_KEY, content_hash, load_checkpoint, project_targets
from lesionseg.config import UsageError

REPO = Path(__file__).resolve().parent.parent
TINY = ("model.base_channels=4", "data.num_training=6", "data.num_testing=0", "data.volume_shape=[32,32,8]", "data.num_workers=0")


class Payload:
    """Pickled into a checkpoint: unpickling it creates `marker` (what an attacker's code would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.mkdir, (str(self.marker),)


@pytest.fixture(scope="module")
def run_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real run's resolved config, as `lesionseg.train` stores it in every checkpoint."""
    config = OmegaConf.to_container(compose_train(TINY, tmp_path_factory.mktemp("run")), resolve=True)
    GlobalHydra.instance().clear()
    assert isinstance(config, dict)
    config.pop("hydra", None)
    return config


def save(path: Path, config: dict[str, Any], state_dict: dict[str, Any] | None = None, **extra: Any) -> Path:
    """A checkpoint with a consistent content hash (a forger can always recompute it)."""
    state_dict = state_dict if state_dict is not None else {"net.weight": torch.arange(6.0).reshape(2, 3)}
    torch.save({"state_dict": state_dict, CONFIG_KEY: config, HASH_KEY: content_hash(state_dict, config), "epoch": 0, **extra}, path)
    return path


def foreign_target(marker: Path) -> dict[str, Any]:
    """A model node that writes `marker` when instantiated (`pathlib.Path.write_text`, as the review found)."""
    return {"_target_": "pathlib.Path.write_text", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "pwned"]}


@pytest.fixture
def hostile(run_config: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    """The two hostile checkpoints and the marker neither may create."""
    marker = tmp_path / "marker"
    pickled = save(tmp_path / "pickled.ckpt", run_config, extra_object=Payload(marker))
    target = save(tmp_path / "target.ckpt", {**run_config, "model": foreign_target(marker)})
    return {"pickled": pickled, "target": target, "marker": marker}


def test_the_hostile_checkpoints_are_live(hostile: dict[str, Path], tmp_path: Path) -> None:
    """Proof the payloads are real: an unsafe load / a plain instantiate runs them (on another marker)."""
    proof = tmp_path / "proof"
    torch.save({"payload": Payload(proof)}, tmp_path / "live.ckpt")
    torch.load(tmp_path / "live.ckpt", weights_only=False)
    assert proof.is_dir()
    hydra.utils.instantiate(foreign_target(tmp_path / "proof2"))
    assert (tmp_path / "proof2").read_text() == "pwned"


def test_load_checkpoint_refuses_pickled_objects_and_foreign_targets(hostile: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="refused: the checkpoint holds pickled Python objects") as error:
        load_checkpoint(hostile["pickled"])
    assert str(hostile["pickled"]) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UsageError) as error:
        load_checkpoint(hostile["target"])
    message = str(error.value)
    assert "model._target_" in message and "'pathlib.Path.write_text'" in message and str(hostile["target"]) in message and "\n" not in message
    assert not hostile["marker"].exists()


@pytest.mark.parametrize(
    ("key", "node", "allowed"),
    [
        ("loss", {"_target_": "lesionseg.outputs.atomic_write_text", "path": "/tmp/x", "text": "y"}, False),  # a lesionseg function that writes files
        ("optimizer", {"_target_": "builtins.eval", "_args_": ["1"]}, False),
        ("data.layout", {"_target_": "numpy.load", "file": "x.npy", "allow_pickle": True}, False),
        ("model", {"_target_": "lesionseg.bench.__main__.main"}, False),  # an entry point must never run
        ("model", {"_target_": "lesionseg.models.blocks.ConvBNReLU", "in_channels": 1, "out_channels": 2}, True),  # a project network class
        ("augment", {"_target_": "albumentations.save", "filepath": "/tmp/x"}, False),  # a function that writes files, in a conf/ module
        ("callbacks.progress_bar", {"_target_": "lightning.pytorch.callbacks.TQDMProgressBar"}, True),  # a class of a conf/ module
        ("loss", {"_target_": "lesionseg.losses.DiceCE"}, True),  # named by conf/loss
        ("loss", {"_target_": "lesionseg.losses.Focal", "gamma": 2.0}, True),
    ],
)
def test_only_the_projects_targets_pass(run_config: dict[str, Any], tmp_path: Path, key: str, node: dict[str, Any], allowed: bool) -> None:
    config = OmegaConf.create(run_config)
    OmegaConf.update(config, key, node, merge=False)
    path = save(tmp_path / "c.ckpt", OmegaConf.to_container(config))  # type: ignore[arg-type]
    if allowed:
        assert load_checkpoint(path)[1].get(key.split(".")[0]) is not None
    else:
        with pytest.raises(UsageError, match=f"stored config key {key}._target_ names target '{node['_target_']}'"):
            load_checkpoint(path)


def test_project_targets_come_from_the_config_tree() -> None:
    targets = project_targets()
    assert {"torch.optim.Adam", "lesionseg.models.unet.UNet", "lightning.pytorch.Trainer", "albumentations.Compose"} <= targets
    assert not any(target.startswith(("pathlib", "builtins", "os.", "numpy")) for target in targets)


def test_interpolations_in_a_stored_config_are_refused(run_config: dict[str, Any], tmp_path: Path) -> None:
    path = save(tmp_path / "i.ckpt", {**run_config, "seed": "${oc.env:HOME}"})
    with pytest.raises(UsageError, match=r"stored config key seed holds an interpolation"):
        load_checkpoint(path)


def test_a_modified_checkpoint_is_reported_and_not_used(run_config: dict[str, Any], tmp_path: Path) -> None:
    path = save(tmp_path / "ok.ckpt", run_config)
    checkpoint, cfg = load_checkpoint(path)
    assert cfg.seed == run_config["seed"] and torch.equal(checkpoint["state_dict"]["net.weight"], torch.arange(6.0).reshape(2, 3))
    checkpoint["state_dict"]["net.weight"][0, 0] = 1e-3  # one weight changed after saving
    torch.save(checkpoint, tmp_path / "weights.ckpt")
    checkpoint["state_dict"]["net.weight"][0, 0] = 0.0
    checkpoint[CONFIG_KEY]["threshold"] = 0.1  # the config changed after saving
    torch.save(checkpoint, tmp_path / "config.ckpt")
    for name in ("weights", "config"):
        with pytest.raises(UsageError, match="content hash mismatch: the weights or config were modified"):
            load_checkpoint(tmp_path / f"{name}.ckpt")
    del checkpoint[HASH_KEY]
    torch.save(checkpoint, tmp_path / "unhashed.ckpt")
    with pytest.raises(UsageError, match="carries no content hash"):
        load_checkpoint(tmp_path / "unhashed.ckpt")
    (tmp_path / "damaged.ckpt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(UsageError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "damaged.ckpt")


def entry_arguments(entry: str, checkpoint: Path, tmp_path: Path) -> list[str]:
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2), np.float32), np.eye(4)), scan)
    return {
        "evaluate": [f"ckpt_path={checkpoint}", f"output_dir={tmp_path / 'out'}"],
        "predict": [f"ckpt_path={checkpoint}", f"input={scan}", f"output_dir={tmp_path / 'out'}"],
        "train": [f"ckpt_path={checkpoint}", f"hydra.run.dir={tmp_path / 'run'}", *TINY, "trainer.max_epochs=1", "logger=none"],
    }[entry]


@pytest.mark.parametrize("kind", ["pickled", "target"])
@pytest.mark.parametrize("entry", ["evaluate", "predict", "train"])
def test_every_entry_point_refuses_hostile_checkpoints(entry: str, kind: str, hostile: dict[str, Path], tmp_path: Path, train_config) -> None:
    """Through each entry point's Python API (the command line's own code path)."""
    from lesionseg.evaluate import evaluate
    from lesionseg.predict import predict
    from lesionseg.training import train

    checkpoint = hostile[kind]
    arguments = entry_arguments(entry, checkpoint, tmp_path)
    with pytest.raises(UsageError) as error:
        if entry == "train":
            train(train_config(*arguments[2:], f"ckpt_path={checkpoint}"))
        else:
            {"evaluate": evaluate, "predict": predict}[entry](arguments)
    message = str(error.value)
    assert str(checkpoint) in message and "refused" in message and "\n" not in message
    assert not hostile["marker"].exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "kind"), [("evaluate", "pickled"), ("predict", "target"), ("train", "pickled")])
def test_the_command_lines_exit_2_with_one_line(entry: str, kind: str, hostile: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = hostile[kind]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "LESIONSEG_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", f"lesionseg.{entry}", *entry_arguments(entry, checkpoint, tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and str(checkpoint) in errors[0] and "refused" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not hostile["marker"].exists()
