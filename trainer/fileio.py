"""Atomic file writes: a temp file in the same directory, fsync, then `os.replace`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from trainer.errors import ConfigError, TrainerError, UsageError

# mkstemp creates files 0600; give finished files the mode a plain open() would (0666 & ~umask)
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


class WriteError(TrainerError):
    """A file could not be written (disk full, permission denied); the old file is intact."""


@contextlib.contextmanager
def atomic_file(
    path: str | Path, *, keep_previous: Path | None = None, sync_dir: bool = False
) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` only once fully written; on any error, nothing.

    `keep_previous`: an existing file at `path` is renamed there just before the new one takes
    its place, so that at every moment one whole file is on disk (at `path` or there).
    `sync_dir`: fsync the folder after the rename, so that the rename itself is durable.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp: str | None = tmp_name
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp_name, path)
        tmp = None
        if sync_dir:
            fsync_dir(path.parent)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def fsync_dir(path: str | Path) -> None:
    """fsync a folder: makes the renames and creations in it durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` atomically; WriteError (the old file intact) if it cannot be written."""
    try:
        with atomic_file(path) as f:
            f.write(data)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def check_writable(path: str | Path, option: str) -> None:
    """Refuse (UsageError) a file path that cannot be written, before any work is done for it:
    a temp file is made beside it and removed."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; name a file")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=True):
            pass
    except OSError as e:
        raise UsageError(f"cannot write {option} {path}: {e.strerror or e}; choose another "
                         f"{option}") from None


def new_folder(parent: str | Path) -> Path:
    """A new, empty folder `parent/<YYYYmmdd-HHMMSS>[-n]` made for one command's output (never
    one an earlier command wrote)."""
    parent, stamp = Path(parent), time.strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            path = parent / (stamp if n == 1 else f"{stamp}-{n}")
            with contextlib.suppress(FileExistsError):
                path.mkdir()  # exclusive: two commands at once never share it
                return path
    except OSError as e:
        raise UsageError(f"cannot create a folder under {parent}: {e.strerror or e}") from None
    raise UsageError(f"too many folders named {stamp} under {parent}")


MAX_JSON_BYTES = 1 << 20  # a config or a space file: far more than any needs (/dev/zero stops)


def read_json(path: str | Path, what: str) -> Any:
    """A small JSON document (a config, a space) from a file, or from standard input for `-`:
    at most MAX_JSON_BYTES, no key twice in an object, nested no deeper than Python can parse.
    ConfigError naming the file and what is wrong otherwise."""
    name = "standard input" if str(path) == "-" else str(path)
    try:
        if str(path) == "-":
            raw = sys.stdin.buffer.read(MAX_JSON_BYTES + 1)
        else:
            with open(path, "rb") as f:
                raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {name}: {e.strerror or e}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise ConfigError(f"{name}: a {what} is at most {MAX_JSON_BYTES // 2**20} MB; this one "
                          f"is larger")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply to be a {what}") from None
    except ValueError as e:  # JSONDecodeError, or a key given twice
        raise ConfigError(f"{name}: not valid JSON: {e}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {json.dumps(key)} appears twice in one object")
        seen[key] = value
    return seen
