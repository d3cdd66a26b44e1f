"""End-to-end training on the built-in synthetic data (tiny, CPU-sized runs)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from lesionseg.training import train

# Small phantoms so each run takes seconds: 10 labelled subjects of 64x64x16 voxels.
TINY_DATA = (
    "data.num_training=10",
    "data.num_testing=1",
    "data.volume_shape=[64,64,16]",
    "data.num_workers=0",
    "data.batch_size=8",
    "model.base_channels=8",
    "logger=csv",
)
SUMMARY_FIELDS = {
    "status",
    "model",
    "data",
    "fold",
    "seed",
    "params",
    "epochs",
    "best_val",
    "last_val",
    "test",
    "test_slice",
    "throughput_img_s",
    "wall_time_s",
    "git_commit",
    "best_checkpoint",
    "last_checkpoint",
}


def run_cli(*arguments: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LESIONSEG_OUTPUTS": str(cwd / "outputs")}
    return subprocess.run([sys.executable, "-m", "lesionseg.train", *arguments], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.mark.slow
def test_fast_dev_run_default_model(train_config) -> None:
    cfg = train_config("debug=fast_dev_run", *TINY_DATA[:3])
    metric, summary = train(cfg)
    assert summary["status"] == "ok"
    assert summary["model"] == "unet_small" and summary["data"] == "synthetic"
    assert summary["params"] > 1_000_000


@pytest.mark.slow
def test_short_run_lowers_loss_raises_dice_and_writes_the_run_folder(train_config) -> None:
    # The default 96x112x40 phantoms (the lesions are too small to learn in seconds at 64x64), fewer of them.
    cfg = train_config(
        "data.num_training=10",
        "data.num_testing=1",
        "data.num_workers=0",
        "data.batch_size=8",
        "model.base_channels=8",
        "logger=csv",
        "trainer.max_epochs=4",
        "optimizer.lr=3e-3",
        "augment=none",
        "scheduler=none",
    )
    metric, summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    train_loss = metrics.dropna(subset=["train/loss_epoch"])["train/loss_epoch"].tolist()
    val_dice = metrics.dropna(subset=["val/dice"])["val/dice"].tolist()
    assert len(train_loss) == 4 and train_loss[-1] < 0.8 * train_loss[0]
    assert metrics["train/dice_epoch"].notna().sum() == 4 and metrics["train/dice_step"].notna().sum() >= 4  # per epoch and step
    assert val_dice[-1] > val_dice[0] + 0.1
    assert metric == pytest.approx(max(val_dice), abs=1e-6)

    written = json.loads((run / "summary.json").read_text())
    assert SUMMARY_FIELDS <= set(written)
    assert written["epochs"] == 4 and written["throughput_img_s"] > 0
    best_epoch = int(np.argmax(val_dice))
    assert written["best_val"]["epoch"] == best_epoch
    assert written["best_val"]["val/loss"] == pytest.approx(metrics.dropna(subset=["val/loss"])["val/loss"].tolist()[best_epoch], abs=1e-5)
    resolved = OmegaConf.load(run / "resolved_config.yaml")
    assert resolved.paths.output_dir == str(run) and resolved.model_name == "unet_small"
    assert {"dice", "iou", "precision", "recall"} <= set(written["test"])
    assert (run / "checkpoints" / "last.ckpt").is_file() and Path(written["best_checkpoint"]).is_file()
    assert sorted(p.name for p in (run / "overlays").glob("*.png"))
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"]) and not set(split["test"]) & set(split["train"] + split["val"])
    subjects = pd.read_csv(run / "test_subjects.csv")
    assert sorted(subjects["subject"]) == sorted(split["test"])


@pytest.mark.slow
def test_checkpoint_resumes_in_another_run(train_config, tmp_path) -> None:
    first_cfg = train_config(*TINY_DATA, "trainer.max_epochs=1", "test=false", "trainer.limit_train_batches=3")
    _, first = train(first_cfg)
    assert first["epochs"] == 1
    resumed_cfg = train_config(*TINY_DATA, "trainer.max_epochs=2", "test=false", "trainer.limit_train_batches=3", f"ckpt_path={first['last_checkpoint']}")
    resumed_cfg.paths.output_dir = str(tmp_path / "resumed")
    _, second = train(resumed_cfg)
    assert second["epochs"] == 2
    assert second["global_step"] == 2 * first["global_step"]
    assert second["resumed_from"] == first["last_checkpoint"]
    saved = torch.load(second["last_checkpoint"], map_location="cpu", weights_only=False)
    assert [epoch["epoch"] for epoch in saved["callbacks"]["ValidationHistory"]["epochs"]] == [0, 1]  # history resumed


def wandb_log_payload(data: bytes, block: int = 32 * 1024, header: int = 7) -> bytes:
    """The records of a wandb `.wandb` file joined, without the block and fragment headers that
    would otherwise split a string crossing a block boundary (file header `:W&B` + 3 bytes, then
    fragments of <checksum u32, length u16, type u8> + data that never cross a block)."""
    assert data[:4] == b":W&B", "not a wandb run log"
    payload, position = bytearray(), header
    while position + header <= len(data):
        left = block - position % block
        if left < header:  # a block tail too short for a fragment header is padding
            position += left
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + header])
        assert kind in (1, 2, 3, 4), f"bad fragment type {kind} at byte {position}"
        payload += data[position + header : position + header + length]
        position += header + length
    return bytes(payload)


@pytest.mark.slow
def test_wandb_offline_logs_the_dashboard_without_network(train_config, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = train_config("debug=limit", "trainer.max_epochs=1", *TINY_DATA[:4], "logger=wandb", "tags=[pilot]", "+logger.wandb.group=ablation")
    _, summary = train(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "no offline wandb run folder written"
    # The run log holds protobuf records (their strings stored verbatim) in 32 KiB LevelDB-log blocks.
    # wandb's service process writes it asynchronously and may still be flushing after finish()
    # returns (seen under a loaded machine), so the last records get a few seconds to land.
    expected = ("pilot", "model:unet_small", "data:synthetic", "fold:0", "ablation", "params", "val/dice", "test/subject_dice")
    deadline = time.monotonic() + 30
    while True:
        records = wandb_log_payload(next(runs[0].glob("*.wandb")).read_bytes())
        missing = [key for key in expected if key.encode() not in records]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"not in the wandb run log after 30 s: {missing}"
    media = runs[0] / "files" / "media"
    assert list((media / "images" / "val").glob("overlays_*.png")), "no validation overlays"
    assert list((media / "images" / "mask" / "val").glob("*.mask.png")), "overlays carry no mask layers"
    table = json.loads(next((media / "table" / "test").glob("subjects_*.table.json")).read_text())
    assert "dice" in table["columns"] and len(table["data"]) == len(pd.read_csv(Path(summary["run_dir"]) / "test_subjects.csv"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["model=nope"], "unknown model 'nope' in 'model=nope'; available:"),
        (["data=atlas"], "data.root is not set: pass data.root=<folder of the atlas dataset>; looked for ATLAS"),
        (["ckpt_path=/nonexistent/x.ckpt"], "checkpoint file not found: /nonexistent/x.ckpt"),
    ],
)
def test_bad_command_line_gives_one_line_error(arguments: list[str], message: str, tmp_path) -> None:
    result = run_cli(*arguments, cwd=tmp_path)
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_help_and_cfg_job(tmp_path) -> None:
    help_text = run_cli("--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "model: " in help_text.stdout
    job = run_cli("--cfg", "job", "model=unet", cwd=tmp_path)
    assert job.returncode == 0 and "lesionseg.models.unet.UNet" in job.stdout
