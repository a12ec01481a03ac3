"""IDX files (MNIST's format): a strict reader and an atomic writer, plain or gzip."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np

from trainer.errors import DataError
from trainer.fileio import atomic_file

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
# The most data an IDX header may promise: 2 GiB, forty times MNIST's training images (EMNIST's
# largest split is 0.6 GB). A header promising more is refused before anything is read, so a
# small gzip bomb claiming a billion images costs nothing.
MAX_IDX_BYTES = 1 << 31
# Every error a damaged file can raise while we read it; anything else is a bug and should surface.
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError)


def read_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX image file: uint8 array of shape (count, rows, cols)."""
    return read_idx(path, magic=IMAGES_MAGIC)


def read_labels(path: str | os.PathLike[str], num_classes: int | None = None) -> np.ndarray:
    """Read an IDX label file: uint8 array of shape (count,), each below num_classes if given."""
    labels = read_idx(path, magic=LABELS_MAGIC)
    if num_classes is not None and labels.size and int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(
            f"{path}: label {bad} is {labels[bad]}: expected a class below {num_classes}, "
            f"found {int(labels.max())} as the largest label"
        )
    return labels


def read_idx(path: str | os.PathLike[str], magic: int | None = None) -> np.ndarray:
    """Read a uint8 IDX file (images or labels, detected by content), checking every byte is there.

    `magic` pins the expected kind (IMAGES_MAGIC or LABELS_MAGIC); None accepts either.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            if raw.read(2) == _GZIP_MAGIC:
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _read_stream(path, stream, magic, available=None)
            raw.seek(0)
            size = os.fstat(raw.fileno()).st_size
            return _read_stream(path, raw, magic, available=size)
    except DataError:
        raise
    except _READ_ERRORS as e:
        raise DataError(f"{path}: cannot read IDX data: {type(e).__name__}: {e}") from e


def _read_stream(path: Path, f: BinaryIO, magic: int | None, available: int | None) -> np.ndarray:
    """Parse header and body; `available` is the file size when known (plain files), else None."""
    shape = _read_header(path, f, magic)
    header = 4 + 4 * len(shape)
    expected = math.prod(shape)  # Python int: an absurd header cannot overflow here
    if available is not None:
        if available != header + expected:
            _raise_length(path, shape, header + expected, available)
        data = np.empty(expected, dtype=np.uint8)
        got = f.readinto(memoryview(data)) if expected else 0
        if got != expected:  # the file shrank while we read it
            _raise_length(path, shape, header + expected, header + (got or 0))
        return data.reshape(shape)
    # gzip: the decompressed size is unknown, so read no more than one byte past what the header
    # promises, into a buffer whose pages are only touched as data arrives; reaching the end of
    # the stream also makes gzip check the CRC.
    data = np.empty(expected, dtype=np.uint8)
    got = _read_into(f, memoryview(data))
    if got != expected or f.read(1):
        found = header + got + (1 if got == expected else 0)
        _raise_length(path, shape, header + expected, found, " (decompressed)")
    return data.reshape(shape)


def _read_header(path: Path, f: BinaryIO, magic: int | None) -> tuple[int, ...]:
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX header: expected 4 bytes, found {len(head)}")
    found = int.from_bytes(head, "big")
    allowed = (magic,) if magic is not None else (IMAGES_MAGIC, LABELS_MAGIC)
    if found not in allowed:
        want = " or ".join(f"{m} (0x{m:08x})" for m in allowed)
        raise DataError(
            f"{path}: bad IDX magic number: expected {want}, found {found} (0x{found:08x}); "
            "only unsigned-byte images (2051) and labels (2049) are supported"
        )
    ndim = head[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(
            f"{path}: truncated IDX header: expected {4 + 4 * ndim} bytes, found {4 + len(dims)}"
        )
    shape = tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    if 0 in shape[1:]:
        raise DataError(f"{path}: bad IDX dimensions: expected rows, cols >= 1, found {shape}")
    if math.prod(shape) > MAX_IDX_BYTES:
        raise DataError(f"{path}: IDX header too large: expected at most {MAX_IDX_BYTES:,} "
                        f"bytes (2 GiB) of data, found a shape of {shape} = "
                        f"{math.prod(shape):,} bytes")
    return shape


def _read_into(f: BinaryIO, buffer: memoryview) -> int:
    """Fill `buffer` from the stream, a chunk at a time, until it is full or the stream ends;
    the number of bytes read."""
    done = 0
    while done < len(buffer):
        got = f.readinto(buffer[done:done + _CHUNK])
        if not got:
            break
        done += got
    return done


def _raise_length(
    path: Path, shape: tuple[int, ...], expected: int, found: int, what: str = ""
) -> NoReturn:
    kind = "trailing bytes after the data" if found > expected else "truncated file"
    raise DataError(
        f"{path}: {kind}: the header's shape {shape} means "
        f"expected {expected} bytes{what}, found {found}"
    )


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a uint8 array of 1 (labels) or 3 (images) dimensions; gzipped if named *.gz."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise DataError(
            f"{path}: cannot write IDX: expected a uint8 array of 1 or 3 dimensions, "
            f"found {array.dtype} with shape {array.shape}"
        )
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    try:
        with atomic_file(path) as out:
            if path.name.endswith(".gz"):
                # mtime=0 and no name: the same array always gives the same bytes (stable hashes).
                # Level 6: MNIST's images take 1 s instead of 14 s at 9, for 2% more bytes.
                gz_args = {"filename": "", "mode": "wb", "mtime": 0, "compresslevel": 6}
                with gzip.GzipFile(fileobj=out, **gz_args) as gz:
                    gz.write(header)
                    gz.write(np.ascontiguousarray(array).data)
            else:
                out.write(header)
                out.write(np.ascontiguousarray(array).data)
    except OSError as e:
        raise DataError(f"{path}: cannot write IDX file: {e}") from e
