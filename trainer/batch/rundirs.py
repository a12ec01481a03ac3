"""A run directory that arrives whole: its files written into a hidden folder beside it, which
then takes its place in one rename (a run's files from a cluster worker)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from trainer.errors import TrainerError
from trainer.fileio import FILE_MODE, fsync_dir

FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def write_run_dir(path: Path, files: dict[str, bytes]) -> None:
    """`path` holding exactly `files` (name: bytes), or, on any error, as it was. A folder
    already there (a run resumed from its checkpoint) is replaced."""
    bad = [name for name in files if not FILE_NAME.fullmatch(name)]
    if bad:
        raise TrainerError(f"{path}: a worker sent a file named {bad[0]!r}; not written")
    try:
        incoming = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".new"))
    except OSError as e:
        raise TrainerError(f"cannot write {path}: {e.strerror or e}") from None
    old = incoming.with_suffix(".old")
    try:
        os.chmod(incoming, 0o777 & ~(0o666 & ~FILE_MODE))  # mkdtemp's is 0700
        for name, blob in files.items():
            fd = os.open(incoming / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                os.fsync(f.fileno())
        fsync_dir(incoming)
        if path.exists():
            os.replace(path, old)
        os.replace(incoming, path)
        fsync_dir(path.parent)
    except OSError as e:
        shutil.rmtree(incoming, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise TrainerError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
