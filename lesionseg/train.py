"""`python -m lesionseg.train [group=option ...] [key=value ...]`: train, validate, test one run.

The command line is checked with Hydra's own override grammar before anything heavy is imported
(a typo such as `model=xnett` is one line in a fraction of a second); the run itself is
`lesionseg.training.train`. `main` returns the optimised metric so Hydra sweepers (Optuna) can use
it; in a multirun a crashed job writes a failed summary and returns None (Optuna records a failed
trial) instead of stopping the sweep.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

from lesionseg.config import CONF_DIR, UsageError, check_overrides, exit_on_usage_error, missing_extra, register_resolvers
from lesionseg.data.cases import DataError

log = logging.getLogger("lesionseg.train")
register_resolvers()
KNOWN_ERRORS = (UsageError, DataError, FileNotFoundError)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra's entry: one run (or one job of a multirun), with one-line errors for known mistakes."""
    from lesionseg.training import finish_wandb_run, train, write_failed_summary

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        try:
            optimized, _ = train(cfg)
            return optimized
        except InstantiationException as wrapped:  # a config's constructor refused its arguments
            cause = wrapped.__cause__
            extra = missing_extra(cause) if cause is not None else None
            if extra is not None:  # e.g. logger=wandb without the [wandb] extra
                raise UsageError(extra) from None
            if isinstance(cause, KNOWN_ERRORS):
                raise cause from None
            if isinstance(cause, ValueError):  # a bad config value (e.g. data.slices=x): one line, exit 2
                raise UsageError(str(cause)) from None
            raise
    except KNOWN_ERRORS as error:
        if multirun:
            log.error("job %s failed: %s", HydraConfig.get().job.num, error)
            write_failed_summary(cfg, error)
            return None
        exit_on_usage_error(str(error))
    except Exception as error:  # a crashed sweep job must not lose the other jobs' results
        if not multirun:
            raise
        log.exception("job %s crashed", HydraConfig.get().job.num)
        write_failed_summary(cfg, error)
        return None
    finally:
        finish_wandb_run()
    return None


def cli() -> None:
    """Check group overrides before Hydra (one-line errors), then run."""
    register_resolvers()
    try:
        check_overrides(sys.argv[1:])
    except UsageError as error:
        exit_on_usage_error(str(error))
    main()


if __name__ == "__main__":
    cli()
