"""Atomic artefacts, honest checkpoints and output folders no two runs share (`lesionseg.outputs`)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from data_fixtures import atlas_module, pristine_r2  # noqa: F401  (fixture)
from omegaconf import OmegaConf

from lesionseg.checkpoints import SafeCheckpointIO, verify_checkpoint
from lesionseg.config import UsageError
from lesionseg.outputs import RunFolderGuard, atomic_write, atomic_write_text, claim_output_dir

REPO = Path(__file__).resolve().parent.parent


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "summary.json", "old")

    def half_then_crash(file) -> None:
        file.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_files_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_slice_store_files_are_readable_by_the_group_under_a_shared_umask(pristine_r2: Path, tmp_path: Path) -> None:  # noqa: F811
    previous = os.umask(0o002)
    try:
        module = atlas_module(pristine_r2, tmp_path / "cache")
        module.prepare_data()
    finally:
        os.umask(previous)
    files = [path for path in (tmp_path / "cache" / "store").rglob("*") if path.is_file()]
    assert files and {path.stat().st_mode & 0o777 for path in files} == {0o664}


WRITER = """
import sys, time
from lesionseg.outputs import atomic_write
def slow(file):
    file.write(b"x" * (1 << 20))
    file.flush()
    time.sleep(60)
atomic_write(sys.argv[1], slow)
"""


def test_a_killed_writer_leaves_the_old_file_and_the_next_write_removes_its_orphan(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "last.ckpt", "complete old checkpoint")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not [path for path in tmp_path.iterdir() if path.name.startswith(".last.ckpt.") and path.stat().st_size >= 1 << 20]:
            assert time.monotonic() < deadline and writer.poll() is None, "the writer never started writing"
            time.sleep(0.1)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert target.read_text() == "complete old checkpoint" and len(leftovers(tmp_path)) == 1  # the orphan
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []


def test_checkpoints_are_written_beside_their_destination_whatever_tmpdir_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing-tmpfs"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing-tmpfs"))
    state = {"w": torch.ones(3)}
    path = tmp_path / "checkpoints" / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": state, "lesionseg_config": {"seed": 1}, "epoch": 4}, path)
    assert verify_checkpoint(path)["epoch"] == 4 and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def _claim(base: str, queue: multiprocessing.Queue) -> None:
    queue.put(str(claim_output_dir(base, unique=True)))


def test_concurrent_runs_never_share_a_folder(tmp_path: Path) -> None:
    base = tmp_path / "outputs" / "2026-12-02" / "10-00-00-000000"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_claim, args=(str(base), queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    folders = {queue.get(timeout=10) for _ in workers}
    assert len(folders) == 4 and {Path(folder).name for folder in folders} == {base.name, *(f"{base.name}-{n}" for n in (1, 2, 3))}


def test_a_named_folder_that_holds_something_is_refused_unless_resuming(tmp_path: Path) -> None:
    assert claim_output_dir(tmp_path / "new") == tmp_path / "new"
    assert claim_output_dir(tmp_path / "new") == tmp_path / "new"  # still empty: fine
    (tmp_path / "new" / "summary.json").write_text("{}")
    with pytest.raises(UsageError, match="exists and is not empty"):
        claim_output_dir(tmp_path / "new")
    assert claim_output_dir(tmp_path / "new", resume=True) == tmp_path / "new"
    assert (tmp_path / "new" / "summary.json").read_text() == "{}"


def hydra_config(mode: str, folder: Path, named: bool, ckpt_path: str | None = None) -> OmegaConf:
    overrides = [f"hydra.{mode}.dir={folder}"] if named else []
    return OmegaConf.create({"hydra": {mode: {"dir": str(folder)}, "overrides": {"hydra": overrides}}, "ckpt_path": ckpt_path})


def test_the_hydra_guard_makes_default_folders_unique_and_refuses_used_named_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    guard = RunFolderGuard()
    first, second = hydra_config("run", tmp_path / "10-00-00", named=False), hydra_config("run", tmp_path / "10-00-00", named=False)
    guard.on_run_start(first)
    guard.on_run_start(second)
    assert (first.hydra.run.dir, second.hydra.run.dir) == (str(tmp_path / "10-00-00"), str(tmp_path / "10-00-00-1"))
    sweep = hydra_config("sweep", tmp_path / "sweep", named=False)
    guard.on_multirun_start(sweep)
    assert sweep.hydra.overrides.hydra[-1] == f"hydra.sweep.dir='{tmp_path / 'sweep'}'"  # every job's re-composed config
    (tmp_path / "10-00-00" / "summary.json").write_text("{}")
    for config in (hydra_config("run", tmp_path / "10-00-00", named=True), hydra_config("sweep", tmp_path / "10-00-00", named=True)):
        with pytest.raises(SystemExit) as exit_:
            (guard.on_run_start if "run" in config.hydra else guard.on_multirun_start)(config)
        assert exit_.value.code == 2
    assert capsys.readouterr().err.count("exists and is not empty") == 2
    guard.on_run_start(hydra_config("run", tmp_path / "10-00-00", named=True, ckpt_path="last"))  # resuming in place


@pytest.mark.slow
def test_last_ckpt_holds_the_last_completed_epoch(train_config) -> None:
    """Lightning 2.6 rewrote last.ckpt only with a new best; the best here is the first epoch (max loss)."""
    from lesionseg.training import train

    cfg = train_config(
        "data.num_training=6",
        "data.num_testing=0",
        "data.volume_shape=[32,32,8]",
        "data.num_workers=0",
        "model.base_channels=4",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=2",
        "optimized_metric=val/loss",
        "optimized_mode=max",
        "test=false",
    )
    _, summary = train(cfg)
    last, best = verify_checkpoint(Path(summary["last_checkpoint"])), verify_checkpoint(Path(summary["best_checkpoint"]))
    assert best["epoch"] < 2, "the best epoch must differ from the last for this test to discriminate"
    assert last["epoch"] == 2 and summary["epochs"] == 3
    written = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
    assert written["epochs"] == 3 and leftovers(Path(summary["last_checkpoint"]).parent) == []
