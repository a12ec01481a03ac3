"""One HTTP download, resumable: the bytes so far are kept in a `.part` file and asked for again
from where they stop (a Range request); verified by MD5 at the end, its SHA-256 returned."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from trainer.errors import DataError

_CHUNK = 1 << 16


class FetchProgress(Protocol):
    """How a fetch reports its steps; the CLI draws them as bars (trainer/cli/display.py)."""

    def start(self, description: str, total: int | None = None, download: bool = False) -> Any:
        """A new step (a download of `total` bytes, or a step without a size); its handle."""

    def advance(self, task: Any, amount: int) -> None:
        """`amount` more bytes of a download received."""

    def done(self, task: Any) -> None:
        """A step without a size finished."""

    def note(self, message: str) -> None:
        """A line to show between the steps."""


class Silent:
    """The FetchProgress that shows nothing."""

    def start(self, description: str, total: int | None = None, download: bool = False) -> None:
        return None

    def advance(self, task: Any, amount: int) -> None:
        pass

    def done(self, task: Any) -> None:
        pass

    def note(self, message: str) -> None:
        pass


class IncompleteDownload(DataError):
    """The connection ended before the whole file came; what came is kept to resume from."""


def download(url: str, target: Path, md5: str, *, partial_dir: Path, timeout: float,
             progress: FetchProgress) -> str:
    """Fetch `url` into `target`, checking its MD5; returns its SHA-256.

    The bytes arrive in `partial_dir`/<name>.part, which outlives an interrupted or cut-short
    download: the next call resumes from its end if the server honours the Range request, and
    starts again from nothing if it does not. A finished file whose MD5 is wrong is deleted
    (the next call starts afresh), then DataError.
    """
    part = partial_dir / f"{target.name}.part"
    have = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, have, timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise
        part.unlink()  # "range not satisfiable": what we hold is no prefix of this file
        have, response = 0, _open(url, 0, timeout)
    with response:
        if have and not _resumes(response, have):
            have = 0  # the server sent the whole file: start again
        md5_hash, sha_hash = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        if have:
            _hash_file(part, md5_hash, sha_hash)
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        task = progress.start(target.name, total, download=True)
        progress.advance(task, have)
        received = have
        partial_dir.mkdir(parents=True, exist_ok=True)
        with open(part, "ab" if have else "wb") as out:
            try:
                while chunk := response.read(_CHUNK):
                    md5_hash.update(chunk)
                    sha_hash.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    progress.advance(task, len(chunk))
            except (OSError, http.client.HTTPException) as e:  # cut mid-way: keep what came
                raise IncompleteDownload(_incomplete(url, total, received, part, e)) from e
            out.flush()
            os.fsync(out.fileno())
    if total is not None and received != total:  # http.client ends a short body quietly
        raise IncompleteDownload(_incomplete(url, total, received, part))
    if md5_hash.hexdigest() != md5:
        part.unlink(missing_ok=True)
        _remove_if_empty(partial_dir)
        raise DataError(f"{url}: MD5 mismatch: expected {md5}, found {md5_hash.hexdigest()}; "
                        "the download was discarded")
    os.replace(part, target)
    _remove_if_empty(partial_dir)
    return sha_hash.hexdigest()


def _remove_if_empty(folder: Path) -> None:
    """The last partial file gone: its folder too."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _open(url: str, start: int, timeout: float) -> Any:
    headers = {"User-Agent": "trainer"}  # some servers refuse Python's default agent
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resumes(response: Any, have: int) -> bool:
    """Whether the response continues a file at byte `have` (206 with a matching range)."""
    content_range = response.headers.get("Content-Range", "")
    return response.status == 206 and content_range.startswith(f"bytes {have}-")


def _hash_file(path: Path, *hashes: Any) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashes:
                h.update(chunk)


def _incomplete(url: str, total: int | None, received: int, part: Path,
                error: BaseException | None = None) -> str:
    expected = f"expected {total} bytes, got {received}" if total else f"got {received} bytes"
    why = f" ({type(error).__name__}: {error})" if error else ""
    return (f"{url}: incomplete download: {expected}{why}; the {received} bytes are kept in "
            f"{part} and the next fetch resumes from there")
