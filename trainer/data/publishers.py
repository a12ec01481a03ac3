"""Fetch a dataset by name from its publisher (or a mirror of it) into its cache folder."""

from __future__ import annotations

import http.client
import os
import shutil
import zipfile
from pathlib import Path

from trainer.data.datasets import DatasetSpec, get_spec, read_mapping, siblings
from trainer.data.download import FetchProgress, Silent, download
from trainer.data.fetch import (
    MIRRORS,
    describe,
    fetch_mnist,
    finish,
    partial_dir,
    staging_folder,
)
from trainer.errors import DataError, FetchError
from trainer.fileio import WriteError, atomic_file

# A mirror of the publishers (an organisation's own server, the tests' stand-in): each
# dataset's files under <mirror>/<spec.mirror_folder>/, checked against the same pinned hashes.
ENV_MIRROR = "TRAINER_MIRROR"
TIMEOUT = 30.0  # seconds without a byte before a publisher counts as unreachable
_MAX_MEMBER = 1 << 30  # EMNIST's largest member (byclass training images) is about 200 MB


def mirror_url() -> str | None:
    return os.environ.get(ENV_MIRROR) or None


def fetch_dataset(dataset: str | DatasetSpec, dest: Path, *, mirror: str | None = None,
                  progress: FetchProgress | None = None, timeout: float = TIMEOUT) -> str:
    """Download, verify and cache `dataset` in `dest` (replaced whole); return the source.

    `mirror` (default: $TRAINER_MIRROR) replaces the publisher's address. An interrupted
    download resumes on the next call (see download.py); the cache is never half-written.
    """
    spec = get_spec(dataset)
    mirror = mirror or mirror_url()
    base = mirror.rstrip("/") + "/" + spec.mirror_folder + "/" if mirror else None
    if spec.name == "mnist":
        return fetch_mnist(dest, mirrors=[base] if base else MIRRORS, md5s=spec.md5,
                           sizes=spec.sizes, progress=progress)
    progress = progress or Silent()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest}: cannot write the cache: {describe(e)}") from e
    try:
        if spec.archive is not None:
            return _fetch_archive(spec, base, dest, timeout, progress)
        return _fetch_files(spec, base or spec.url, dest, timeout, progress)
    except WriteError:  # a full disk: exit 1, said as such (not a fault of the data)
        raise
    except (OSError, http.client.HTTPException, ValueError, zipfile.BadZipFile,
            DataError) as e:
        raise FetchError(_failure_message(spec, base or spec.url, e, dest)) from e


def _fetch_files(spec: DatasetSpec, base: str, dest: Path, timeout: float,
                 progress: FetchProgress) -> str:
    with staging_folder(dest) as staging:
        verified = {}
        for name in spec.files:
            url = base.rstrip("/") + "/" + name
            sha = download(url, staging / name, spec.md5[name], partial_dir=partial_dir(dest),
                           timeout=timeout, progress=progress, size=spec.sizes.get(name))
            verified[name] = {"url": url, "md5": spec.md5[name], "sha256": sha}
        return finish(staging, dest, f"{spec.publisher} ({base})", files=spec.files,
                      dataset=spec.name, verified=verified)


def _fetch_archive(spec: DatasetSpec, base: str | None, dest: Path, timeout: float,
                   progress: FetchProgress) -> str:
    """Download the archive once, then cache every dataset it holds (EMNIST: all six splits),
    each in its own folder beside `dest`."""
    archive = str(spec.archive)
    url = base + archive if base else spec.url
    source = f"{spec.publisher} ({url})"
    with staging_folder(dest) as tmp:
        # one partial download for the archive, whichever of its datasets asked for it
        sha = download(url, tmp / archive, spec.md5[archive],
                       partial_dir=partial_dir(dest.parent / spec.mirror_folder),
                       timeout=timeout, progress=progress, size=spec.sizes.get(archive))
        verified = {archive: {"url": url, "md5": spec.md5[archive], "sha256": sha}}
        with zipfile.ZipFile(tmp / archive) as zf:
            for each in siblings(spec):
                target = dest.parent / each.name
                with staging_folder(target) as staging:
                    task = progress.start(f"extract {each.name}")
                    _extract(zf, each, staging)
                    finish(staging, target, source, files=each.cached_files,
                           dataset=each.name, verified=verified)
                    progress.done(task)
    return source


def _extract(zf: zipfile.ZipFile, spec: DatasetSpec, staging: Path) -> None:
    """Copy the dataset's members out of the archive unchanged (zipfile checks each CRC), then
    check the mapping reads."""
    for name in spec.cached_files:
        member = spec.archive_members + name
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise DataError(f"the archive has no member {member}") from None
        if info.file_size > _MAX_MEMBER:
            raise DataError(f"archive member {member} is {info.file_size:,} bytes, more than "
                            f"the {_MAX_MEMBER:,} expected at most")
        with zf.open(info) as src, atomic_file(staging / name) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    if spec.mapping:
        read_mapping(staging / spec.mapping, spec.label_offset)


def _failure_message(spec: DatasetSpec, where: str, error: BaseException, dest: Path) -> str:
    names = ", ".join(spec.files)
    return (f"could not fetch {spec.title} from {where}: {describe(error)}\n"
            f"To install it by hand, put the files {names}"
            + (f" and {spec.mapping}" if spec.mapping else "")
            + f" in a folder and pass --data-dir FOLDER --dataset {spec.name}, or put them in "
            f"{dest}")
