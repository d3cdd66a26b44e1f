"""Sweeps (`sweeps/`, `conf/hydra/launcher/`): definitions compose; multiruns keep every job's results.

Hydra sweep files are primary configs that extend conf/train.yaml, launched as
`python -m lesionseg.train -m -cd sweeps -cn <name>`; `wandb_*.yaml` are wandb agent sweeps. The
subprocess tests run real multiruns on tiny synthetic data (one epoch of two batches per job).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_helpers import compose_train
from omegaconf import DictConfig, OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from lesionseg.config import CONF_DIR

# Whole multiruns and launchers in subprocesses: the slow lane.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"
HYDRA_SWEEPS = sorted(path.stem for path in SWEEPS.glob("*.yaml") if not path.name.startswith("wandb_"))
WANDB_SWEEPS = sorted(path.name for path in SWEEPS.glob("wandb_*.yaml"))
TABLES = {
    "xnet_table": ["xnet_atlas", "unet_atlas", "segnet_atlas", "dense_unet_atlas"],
    "lgg_table": ["mnv3_lgg", "mnv3_skip_lgg", "unext_lgg", "unet_lgg"],
}
TINY_JOB = (
    "data.num_training=8",
    "data.num_testing=0",
    "data.volume_shape=[64,64,16]",
    "data.num_workers=0",
    "data.batch_size=8",
    "model.base_channels=4",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
    "callbacks.model_summary=null",
)


def compose_sweep(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose sweeps/<name>.yaml as `-cd sweeps -cn <name>` does (conf/ on the search path)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
            cfg = compose(name, overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", *overrides], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve
    return cfg


def sweep_jobs(params: DictConfig) -> list[list[str]]:
    """The override lists of a basic sweeper's `hydra.sweeper.params`: one per job (cartesian product)."""
    parser = OverridesParser.create()
    axes = [[f"{key}={value}" for value in parser.parse_override(f"{key}={spec}").sweep_iterator()] for key, spec in params.items()]
    return [list(job) for job in itertools.product(*axes)]


def run_train(*arguments: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LESIONSEG_OUTPUTS": str(cwd / "outputs")}
    return subprocess.run([sys.executable, "-m", "lesionseg.train", *arguments], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def job_summaries(outputs: Path) -> dict[int, dict]:
    """summary.json of each job of the one multirun under `outputs`, by job number."""
    sweeps = list(outputs.glob("multirun/*/*"))
    assert len(sweeps) == 1, sweeps
    return {int(path.parent.name): json.loads(path.read_text()) for path in sweeps[0].glob("*/summary.json")}


# ---------------------------------------------------------------- definitions


@pytest.mark.parametrize("name", HYDRA_SWEEPS)
def test_hydra_sweep_file_composes(name: str) -> None:
    cfg = compose_sweep(name)
    assert cfg.hydra.sweeper.params, f"{name} sweeps nothing"
    for key in cfg.hydra.sweeper.params:  # a config group or an existing key
        known = key in cfg.hydra.runtime.choices or OmegaConf.select(cfg, key, default="absent") != "absent"
        assert known, f"{name}: unknown key {key}"


@pytest.mark.parametrize(("name", "experiments"), TABLES.items())
def test_table_sweep_runs_every_recipe_on_every_fold(name: str, experiments: list[str]) -> None:
    jobs = sweep_jobs(compose_sweep(name).hydra.sweeper.params)
    expected = [[f"experiment={experiment}", f"data.fold={fold}"] for experiment in experiments for fold in range(5)]
    assert sorted(jobs) == sorted(expected)
    for experiment in experiments:
        job = compose_sweep(name, [f"experiment={experiment}", "data.fold=4"])
        assert job.experiment_name == experiment and job.data.fold == 4


def test_lgg_table_scores_every_method_on_the_same_split() -> None:
    splits = {
        experiment: OmegaConf.to_container(compose_sweep("lgg_table", [f"experiment={experiment}"]).data, resolve=False) for experiment in TABLES["lgg_table"]
    }
    keys = ("num_folds", "test_fraction", "split_seed", "kfold_shuffle")
    assert len({tuple(split[key] for key in keys) for split in splits.values()}) == 1
    assert splits["unet_lgg"]["test_fraction"] == 0.2  # its own recipe has no test set


def test_optuna_sweep_maximises_the_metric_train_returns() -> None:
    cfg = compose_sweep("optuna_search")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/dice"


@pytest.mark.parametrize("name", WANDB_SWEEPS)
def test_wandb_sweep_runs_lesionseg_train_with_valid_overrides(name: str) -> None:
    sweep = yaml.safe_load((SWEEPS / name).read_text())
    command = sweep["command"]
    assert command[command.index("-m") + 1] == "lesionseg.train" and command[-1] == "${args_no_hyphens}"
    assert sweep["metric"] == {"name": "val/dice", "goal": "maximize"}
    assert sweep["method"] in ("grid", "random", "bayes")
    # What an agent passes for one run: one value per parameter, formatted by wandb itself.
    chosen = {
        key: {"value": spec["value"] if "value" in spec else spec["values"][0] if "values" in spec else spec["min"]}
        for key, spec in sweep["parameters"].items()
    }
    overrides = create_sweep_command_args({"args": chosen})["args_no_hyphens"]
    cfg = compose_train(overrides, None)
    for key, value in chosen.items():
        selected = cfg.hydra.runtime.choices.get(key) if key in cfg.hydra.runtime.choices else OmegaConf.select(cfg, key)
        assert selected == value["value"], key
    if sweep["method"] == "grid":  # the LGG table: 4 recipes x 5 folds
        assert math.prod(len(spec.get("values", [None])) for spec in sweep["parameters"].values()) == 20


@pytest.mark.parametrize("sweep", [None, "xnet_table"])
def test_slurm_launcher_preset_gives_each_job_one_gpu(sweep: str | None) -> None:
    overrides = ["hydra/launcher=slurm_gpu"]
    launcher = (compose_sweep(sweep, overrides) if sweep else compose_train(overrides, None)).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.nodes == 1


def test_readme_commands_name_existing_sweeps_experiments_and_launchers() -> None:
    readme = (SWEEPS / "README.md").read_text()
    assert set(re.findall(r"-cn (\w+)", readme)) == set(HYDRA_SWEEPS)
    for experiment in set(re.findall(r"experiment=(\w+)", readme)):
        assert (CONF_DIR / "experiment" / f"{experiment}.yaml").is_file(), experiment
    for name in set(re.findall(r"sweeps/(wandb_\w+\.yaml)", readme)):
        assert name in WANDB_SWEEPS, name


# ---------------------------------------------------------------- multiruns


def test_multirun_keeps_each_jobs_results_and_reports_the_crashed_one(tmp_path) -> None:
    result = run_train("-m", *TINY_JOB, "data.fold=0,1,7", cwd=tmp_path)
    # A crashed job is recorded, not raised: the multirun itself succeeds.
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = job_summaries(tmp_path / "outputs")
    assert sorted(summaries) == [0, 1, 2]
    for job in (0, 1):
        assert summaries[job]["status"] == "ok" and summaries[job]["fold"] == job
        assert Path(summaries[job]["last_checkpoint"]).is_file()
        assert (Path(summaries[job]["run_dir"]) / ".hydra" / "overrides.yaml").is_file()
    assert summaries[2]["status"] == "failed" and summaries[2]["fold"] == 7
    assert "data.fold=7" in summaries[2]["error"]


def test_optuna_sweep_runs_trials_and_writes_the_best_one(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searched_batch = [override for override in TINY_JOB if not override.startswith("data.batch_size=")]
    result = run_train(
        "-m",
        "-cd",
        str(SWEEPS),
        "-cn",
        "optuna_search",
        *searched_batch,
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=tiny",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = job_summaries(tmp_path / "outputs")
    assert sorted(summaries) == [0, 1] and all(s["status"] == "ok" for s in summaries.values())
    results = yaml.safe_load(next((tmp_path / "outputs").glob("multirun/*/*/optimization_results.yaml")).read_text())
    assert results["best_value"] == pytest.approx(max(s["best_val"]["val/dice"] for s in summaries.values()))
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_optuna_search_records_a_crashed_trial_as_failed_and_goes_on(tmp_path) -> None:
    result = run_train(
        "-m",
        "-cd",
        str(SWEEPS),
        "-cn",
        "optuna_search",
        *TINY_JOB,
        "test=false",
        "optimizer.lr=1e-3",
        "optimizer.weight_decay=0",
        "hydra.sweeper.n_trials=3",
        "data.fold=choice(0,7)",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = job_summaries(tmp_path / "outputs")
    assert {summary["status"] for summary in summaries.values()} == {"ok", "failed"}
    results = yaml.safe_load(next((tmp_path / "outputs").glob("multirun/*/*/optimization_results.yaml")).read_text())
    assert results["best_params"] == {"data.fold": 0}


def test_submitit_local_launcher_runs_the_job_in_its_own_process(tmp_path) -> None:
    result = run_train(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        *TINY_JOB,
        "train=false",
        "test=false",
        "seed=7",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = job_summaries(tmp_path / "outputs")
    assert summaries[0]["status"] == "ok" and summaries[0]["seed"] == 7
    sweep = next((tmp_path / "outputs").glob("multirun/*/*"))
    assert list(sweep.glob(".submitit/*/*_0_result.pkl")), "submitit did not run the job"
