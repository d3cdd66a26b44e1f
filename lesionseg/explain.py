"""`python -m lesionseg.explain ckpt_path=<ckpt> input=<scan or folder> method=gradcam,gradcampp,lime,occlusion`.

A Hydra app over `conf/explain.yaml`: saliency maps of a trained model's predicted lesion per scan,
in the scan's geometry, with overlay figures, `explanations.csv` (faithfulness and plausibility
scores per scan and method), `explain.json`, and seconds per slice per method printed. Also on a
split of the checkpoint's dataset (`split=test data.root=...`), where labels give the plausibility
scores. The logic lives in `lesionseg.explanations`; this module only parses and reports.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lesionseg.config import CONF_DIR, UsageError, check_overrides, exit_on_usage_error, register_resolvers
from lesionseg.data.cases import DataError
from lesionseg.explanations.pipeline import explain

LIST_KEYS = ("method", "ckpt_path")
ARGUMENT = re.compile(r"^(?P<key>[\w.]+)=(?P<value>.*)$")


def list_arguments(arguments: Sequence[str]) -> list[str]:
    """`method=a,b` and `ckpt_path=a,b` as lists (Hydra reads a bare comma as a sweep outside -m)."""
    if "-m" in arguments or "--multirun" in arguments:
        return list(arguments)
    rewritten = []
    for argument in arguments:
        match = ARGUMENT.match(argument)
        if match and match.group("key") in LIST_KEYS and "," in match.group("value") and not match.group("value").startswith("["):
            argument = f"{match.group('key')}=[{match.group('value')}]"
        rewritten.append(argument)
    return rewritten


def check_keys(arguments: Sequence[str]) -> None:
    """A one-line UsageError for an override of a key conf/explain.yaml does not have."""
    known = OmegaConf.load(CONF_DIR / "explain.yaml")
    for argument in arguments:
        match = ARGUMENT.match(argument)
        if not match or match.group("key").startswith("hydra."):
            continue
        key = match.group("key")
        if (CONF_DIR / key).is_dir():  # a config group (logger=wandb), checked by check_overrides
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(known, parent) if parent else known
        if not isinstance(node, DictConfig) or leaf not in node.keys():
            raise UsageError(f"unknown key '{key}' in '{argument}'; see conf/explain.yaml")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="explain")
def run(cfg: DictConfig) -> None:
    try:
        try:
            summary = explain(cfg)
        except InstantiationException as wrapped:  # the dataset config refused its arguments
            cause = wrapped.__cause__
            raise (cause if isinstance(cause, UsageError | DataError) else UsageError(str(cause))) from None
    except MissingMandatoryValue:
        exit_on_usage_error("ckpt_path=<checkpoint file> (or a list of them) is required")
    except (UsageError, DataError, FileNotFoundError) as error:
        exit_on_usage_error(str(error))
    if summary["failed"]:
        exit_on_usage_error(f"{summary['failed']} of {summary['scans']} scans failed; see {summary['output_dir']}/explanations.csv")


def main() -> None:
    """Console entry point: one-line errors for unknown keys, comma lists, then the Hydra app."""
    register_resolvers()
    arguments = list_arguments(sys.argv[1:])
    try:
        check_overrides(arguments)
        check_keys(arguments)
    except UsageError as error:
        exit_on_usage_error(str(error))
    sys.argv = [sys.argv[0], *arguments]
    run()


if __name__ == "__main__":
    main()
