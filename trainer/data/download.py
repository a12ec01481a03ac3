"""One HTTP download, resumable: the bytes so far are kept in a `.part` file and asked for again
from where they stop (a Range request); verified by MD5 at the end, its SHA-256 returned."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from trainer.errors import DataError
from trainer.fileio import WriteError

_CHUNK = 1 << 16
# a server that sends less than STALL_BYTES in STALL_SECONDS has stalled: the socket's own
# timeout only bounds one read, and a byte every few seconds renews it forever
STALL_SECONDS = 30.0
STALL_BYTES = 16 << 10


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
             progress: FetchProgress, size: int | None = None) -> str:
    """Fetch `url` into `target`, checking its MD5; returns its SHA-256.

    The bytes arrive in `partial_dir`/<name>.part, which outlives an interrupted or cut-short
    download: the next call resumes from its end if the server honours the Range request, and
    starts again from nothing if it does not. A finished file whose MD5 is wrong is deleted
    (the next call starts afresh), then DataError. `size`: the file's known length; a server
    that sends more is cut off there (DataError, nothing kept). A stalled server (STALL_SECONDS)
    is an IncompleteDownload; a full disk a WriteError, "the disk is full".
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
        total = have + int(length) if length and length.isdigit() else size
        if size is not None and total is not None and total > size:
            _discard(part, partial_dir)
            raise DataError(f"{url}: the server offers {total:,} bytes; {target.name} has "
                            f"{size:,}: the download was refused")
        task = progress.start(target.name, total, download=True)
        progress.advance(task, have)
        _mkdir(partial_dir)
        with _open_part(part, have) as out:
            received = _receive(response, out, (md5_hash, sha_hash), have, size,
                                lambda n: progress.advance(task, n), url, part, total)
    if size is not None and received > size:
        _discard(part, partial_dir)
        raise DataError(f"{url}: the server sent more than the {size:,} bytes of "
                        f"{target.name}: the download was discarded")
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


def _receive(response: Any, out: Any, hashes: tuple[Any, ...], have: int, size: int | None,
             advance: Any, url: str, part: Path, total: int | None) -> int:
    """The body into `out` (and the hashes) as it comes; the bytes held then. Stops one chunk
    past `size`, and at a stall; a cut connection keeps what came (IncompleteDownload)."""
    received, mark, since = have, have, time.monotonic()
    while True:
        try:
            chunk = response.read1(_CHUNK)  # what has come, not a full chunk: see stalls
        except (OSError, http.client.HTTPException) as e:  # cut mid-way: keep what came
            _flush(out, part)
            raise IncompleteDownload(_incomplete(url, total, received, part, e)) from e
        if not chunk:
            break
        for h in hashes:
            h.update(chunk)
        try:
            out.write(chunk)
        except OSError as e:
            raise _write_error(part, e) from e
        received += len(chunk)
        advance(len(chunk))
        if size is not None and received > size:
            break
        now = time.monotonic()
        if received - mark >= STALL_BYTES:
            mark, since = received, now
        elif now - since > STALL_SECONDS:
            _flush(out, part)
            raise IncompleteDownload(_incomplete(
                url, total, received, part, f"stalled: under {STALL_BYTES:,} bytes in "
                f"{STALL_SECONDS:g} s"))
    _flush(out, part)
    return received


def _flush(out: Any, part: Path) -> None:
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as e:
        raise _write_error(part, e) from e


def _open_part(part: Path, have: int) -> Any:
    try:
        return open(part, "ab" if have else "wb")
    except OSError as e:
        raise _write_error(part, e) from e


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(folder, e) from e


def _write_error(path: Path, e: OSError) -> WriteError:
    """A write that failed: exit 1 (not bad input); a full disk said in words."""
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    return WriteError(f"cannot write {path}: " + ("the disk is full; free some space and fetch "
                      "again (what came is kept to resume from)" if full
                      else f"{e.strerror or e}"))


def _discard(part: Path, folder: Path) -> None:
    part.unlink(missing_ok=True)
    _remove_if_empty(folder)


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
                error: BaseException | str | None = None) -> str:
    expected = f"expected {total} bytes, got {received}" if total else f"got {received} bytes"
    why = f" ({error})" if isinstance(error, str) else \
        f" ({type(error).__name__}: {error})" if error else ""
    return (f"{url}: incomplete download: {expected}{why}; the {received} bytes are kept in "
            f"{part} and the next fetch resumes from there")
