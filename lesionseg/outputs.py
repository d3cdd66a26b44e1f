"""How the project writes what it produces: atomic files, and output folders no two runs share.

`atomic_write` is the one way an artefact reaches disk (checkpoints, `summary.json`, evaluation and
prediction files, the slice store): the bytes go to a temporary file in the destination folder
(never `$TMPDIR`, which may be another filesystem), are fsynced, and `os.replace` moves them into
place, so a reader or a resumed run sees the old file or the new one, never half of one. The
temporary name carries the host and process id: a write killed by SIGKILL leaves an orphan that
the next write of the same file (by any process on that host) removes. Files are created with mode
0666 minus the umask, like any other file the user creates.

`claim_output_dir` is the one output-folder policy of every entry point: a folder that already
holds something is refused (unless a run is resumed in it), and a default folder name that a
concurrent run took first gets a `-1`, `-2`, ... suffix, created exclusively (`os.mkdir`), so two
runs started in the same second never share a folder. `RunFolderGuard` applies it to Hydra's run
and sweep folders before Hydra writes anything into them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from lesionseg.config import UsageError, exit_on_usage_error

HOST = socket.gethostname().replace(".", "-")
TEMPORARY_SUFFIX = ".tmp"


def _temporary_name(path: Path) -> Path:
    """`.<name>.<host>.<pid>.<random>.tmp<suffix>` beside `path` (the suffix kept for writers that read it)."""
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_orphans(path: Path) -> list[Path]:
    """Remove temporary files of `path` left by killed writers on this host; return them."""
    removed = []
    prefix = f".{path.name}.{HOST}."
    for candidate in path.parent.glob(f"{prefix}*{TEMPORARY_SUFFIX}*"):
        pid = candidate.name[len(prefix) :].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def atomic_save(path: str | Path, save: Callable[[Path], Any]) -> Path:
    """Write `path` through `save(temporary path)`: temp file beside it, fsync, `os.replace`; return `path`.

    For writers that want a file name (torch.save, nibabel, np.savez): the temporary name keeps
    `path`'s suffix. On any failure (an exception, KeyboardInterrupt) the temporary file is removed
    and the old `path`, if any, is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path)
    temporary = _temporary_name(path)
    try:
        save(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """`atomic_save` through `write(binary file)`; the file is created 0666 minus the umask."""

    def save(temporary: Path) -> None:
        with open(temporary, "xb") as file:
            write(file)

    return atomic_save(path, save)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def holds_something(folder: Path) -> bool:
    """True when `folder` exists and is not an empty folder."""
    return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))


def claim_output_dir(folder: str | Path, *, unique: bool = False, resume: bool = False, what: str = "output_dir") -> Path:
    """The output folder policy of every entry point; returns the folder, created.

    `unique=True` (a default, generated name): the folder is created exclusively; if another run
    took the name first, `<name>-1`, `<name>-2`, ... is tried. `unique=False` (a folder the user
    named): it must be new or empty, else a UsageError naming it, unless `resume` (a run resumed in
    its own folder).
    """
    folder = Path(folder).expanduser()
    if unique:
        folder.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            candidate = folder if attempt == 0 else folder.with_name(f"{folder.name}-{attempt}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
        raise UsageError(f"{what}: could not create a new folder beside {folder}")
    if holds_something(folder) and not resume:
        raise UsageError(f"{what} {folder} exists and is not empty; choose another folder (or resume the run in it: ckpt_path=last)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class RunFolderGuard(Callback):
    """Hydra callback: `claim_output_dir` for Hydra's run folder and sweep folder, before Hydra writes.

    A default (timestamped) folder is made unique; a folder named on the command line
    (`hydra.run.dir=...`, `hydra.sweep.dir=...`) that already holds a run is refused with one line
    and exit code 2, unless the command resumes (`ckpt_path` set).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "sweep")

    @staticmethod
    def _claim(config: DictConfig, mode: str) -> None:
        named = any(override.split("=", 1)[0].lstrip("+") == f"hydra.{mode}.dir" for override in config.hydra.overrides.hydra)
        resume = config.get("ckpt_path") is not None
        try:
            folder = claim_output_dir(str(config.hydra[mode].dir), unique=not named, resume=resume, what=f"hydra.{mode}.dir")
        except UsageError as error:
            exit_on_usage_error(str(error))
        with open_dict(config):
            config.hydra[mode].dir = str(folder)
            if mode == "sweep":  # each job's config is re-composed from these overrides
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{folder}'")
