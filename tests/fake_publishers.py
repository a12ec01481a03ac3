"""Stand-ins for the datasets' publishers: small generated files in each one's layout, served
from 127.0.0.1 by a server that can honour or ignore Range requests, cut a body short, fail or
redirect.

Run as a script it serves them and runs the `trainer` command given after `--` in this process,
with TRAINER_MIRROR pointing at the server and the pinned MD5s swapped for the generated files':

    python tests/fake_publishers.py -- data fetch --dataset fashion-mnist
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.server
import io
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_dataset  # noqa: E402

from trainer.data.datasets import DATASETS, EMNIST_SPLITS, GZ_NAMES, DatasetSpec  # noqa: E402

# EMNIST's characters per split: digits, then capitals, then the small letters kept apart
DIGITS = [ord(c) for c in "0123456789"]
UPPER = [ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
LOWER = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz"]
MERGED_LOWER = [ord(c) for c in "abdefghnqrt"]  # balanced and bymerge: 47 classes
EMNIST_CODES = {"digits": DIGITS, "mnist": DIGITS, "balanced": DIGITS + UPPER + MERGED_LOWER,
                "bymerge": DIGITS + UPPER + MERGED_LOWER, "byclass": DIGITS + UPPER + LOWER}


BOOST = 40  # faint enough that a trained network still makes mistakes to show


def gz_idx(array: np.ndarray) -> bytes:
    """An array as the bytes of an IDX .gz file."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write((0x0800 | array.ndim).to_bytes(4, "big")
                 + b"".join(d.to_bytes(4, "big") for d in array.shape))
        gz.write(np.ascontiguousarray(array).data)
    return buf.getvalue()


def four_files(data) -> dict[str, bytes]:
    arrays = (data.train_images, data.train_labels, data.test_images, data.test_labels)
    return {name: gz_idx(a) for name, a in zip(GZ_NAMES, arrays, strict=True)}


def mapping_text(split: str) -> str:
    if split == "letters":
        return "".join(f"{i + 1} {u} {lo}\n" for i, (u, lo) in enumerate(zip(UPPER, LOWER,
                                                                             strict=True)))
    return "".join(f"{i} {c}\n" for i, c in enumerate(EMNIST_CODES[split]))


@dataclass
class Publishers:
    """The generated files by URL path, and the upright data each EMNIST split holds."""

    files: dict[str, bytes] = field(default_factory=dict)
    upright: dict[str, object] = field(default_factory=dict)  # dataset name -> Dataset

    def md5(self, path: str) -> str:
        return hashlib.md5(self.files[path]).hexdigest()

    def spec(self, name: str) -> DatasetSpec:
        """The registry's spec with the MD5s of the generated files."""
        spec = DATASETS[name]
        if spec.archive:
            body = self.files["emnist/gzip.zip"]
            return dataclasses.replace(spec, md5={spec.archive: self.md5("emnist/gzip.zip")},
                                       sizes={spec.archive: len(body)})
        paths = {n: f"{spec.mirror_folder}/{n}" for n in spec.files}
        return dataclasses.replace(spec, md5={n: self.md5(p) for n, p in paths.items()},
                                   sizes={n: len(self.files[p]) for n, p in paths.items()})


def make_publishers(n_train: int = 1200, n_test: int = 300,
                    letters_train: int = 2600) -> Publishers:
    pub = Publishers()
    for seed, name in enumerate(("mnist", "fashion-mnist", "kmnist")):
        data = make_dataset(n_train, n_test, shape=(28, 28), classes=10, seed=10 + seed,
                            boost=BOOST)
        pub.upright[name] = data
        for file, body in four_files(data).items():
            pub.files[f"{name}/{file}"] = body
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for seed, split in enumerate(EMNIST_SPLITS):
            classes = 26 if split == "letters" else len(EMNIST_CODES[split])
            n = letters_train if split == "letters" else 4 * classes
            data = make_dataset(n, max(n // 4, classes), shape=(28, 28), classes=classes,
                                seed=20 + seed, boost=BOOST)
            pub.upright[f"emnist-{split}"] = data
            offset = 1 if split == "letters" else 0
            stored = dataclasses.replace(  # as NIST stores them: transposed, letters from 1
                data, train_images=data.train_images.transpose(0, 2, 1),
                test_images=data.test_images.transpose(0, 2, 1),
                train_labels=data.train_labels + np.uint8(offset),
                test_labels=data.test_labels + np.uint8(offset))
            spec = DATASETS[f"emnist-{split}"]
            for file, body in zip(spec.files, four_files(stored).values(), strict=True):
                zf.writestr(f"gzip/{file}", body)
            zf.writestr(f"gzip/{spec.mapping}", mapping_text(split))
    pub.files["emnist/gzip.zip"] = archive.getvalue()
    return pub


@dataclass
class Behaviour:
    """How the server misbehaves; tests change it between requests."""

    ranges: bool = True  # honour Range requests (206), else send the whole file (200)
    cut_after: int | None = None  # send this many bytes of the body, then hang up
    status: dict[str, int] = field(default_factory=dict)  # path -> an error status to answer
    redirects: dict[str, str] = field(default_factory=dict)  # path -> where it moved
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)


@contextlib.contextmanager
def serve(files: dict[str, bytes], behaviour: Behaviour | None = None) -> Iterator[str]:
    """Serve `files` (URL path -> bytes) on 127.0.0.1; yields the base URL."""
    behaviour = behaviour or Behaviour()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = self.path.lstrip("/")
            behaviour.requests.append((path, self.headers.get("Range")))
            if path in behaviour.status:
                self.send_error(behaviour.status[path])
                return
            if path in behaviour.redirects:
                self.send_response(302)
                self.send_header("Location", "/" + behaviour.redirects[path])
                self.end_headers()
                return
            body = files.get(path)
            if body is None:
                self.send_error(404)
                return
            start = self._range_start(len(body))
            if start is None:
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            sent = body[start:]
            if behaviour.cut_after is not None:
                sent = sent[:behaviour.cut_after]
            self.wfile.write(sent)

        def _range_start(self, size: int) -> int | None:
            """Where the body starts (0: the whole file); None if a 416 was sent."""
            wanted = self.headers.get("Range")
            if not (behaviour.ranges and wanted and wanted.startswith("bytes=")):
                return 0
            start = int(wanted[6:].split("-")[0])
            if start >= size:
                self.send_error(416)
                return None
            return start

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _main(argv: list[str]) -> int:
    """Serve the generated files and run `trainer ARGS...` against them, in this process."""
    import os

    from trainer.cli.app import app

    args = argv[argv.index("--") + 1:] if "--" in argv else argv
    pub = make_publishers()
    for name in DATASETS:
        DATASETS[name] = pub.spec(name)  # the generated files' MD5s in place of the pinned ones
    with serve(pub.files) as url:
        os.environ["TRAINER_MIRROR"] = url
        try:
            app(args, prog_name="trainer")
        except SystemExit as e:
            return int(e.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
