"""A CSV logger that appends to an existing metrics file instead of breaking on it.

Lightning's CSV writer forgets the columns already in `metrics.csv` when a new writer opens the same
folder (each `ddp_spawn` stage starts fresh processes; a resumed run reopens its folder), and then
fails to rewrite the header. This writer reads the existing header first, so fit, test and resumed
stages all land in one `metrics.csv`.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingExperimentWriter(ExperimentWriter):
    """ExperimentWriter that takes the columns already in the metrics file into account.

    The header is read at every save, not once: a writer pickled into spawned processes holds a
    stale column list while the file on disk has grown.
    """

    def _record_new_keys(self) -> set[str]:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                on_disk = next(csv.reader(file), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(on_disk))
        return super()._record_new_keys()

    def _check_log_dir_exists(self) -> None:
        """Appending is the point: no warning that the folder holds logs already."""


class AppendingCSVLogger(CSVLogger):
    """CSVLogger whose metrics file survives new processes and resumed stages."""

    @property
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        assert isinstance(self._experiment, AppendingExperimentWriter)
        return self._experiment
