"""`gemm_acc` and `axpy` for NumPy: BLAS calls that NumPy itself does not expose.

gemm_acc: out = alpha * (a @ b) + beta * out in one call. The training step keeps momentum
velocities this way (v = m v + g in the GEMM that computes g, the gradient with -lr folded in;
trainer/core/optim.py states the convention), which saves
two passes over every large weight matrix per step. axpy: y += alpha * x on the BLAS's threads,
for the step's w += v. Both call the OpenBLAS that NumPy itself ships and has loaded (never a
second BLAS: two OpenBLAS builds in one hot loop slow each other down a hundredfold), and only
through its 64-bit-integer CBLAS entry points, whose signatures are unambiguous. Where there is
no such library, `load()` and `load_axpy()` return None and the step does the same work with
NumPy operations.
"""

from __future__ import annotations

import ctypes
import glob
import os
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
SYMBOLS = ("scipy_cblas_{}64_", "cblas_{}64_")  # ILP64 builds that numpy wheels ship


def _library() -> ctypes.CDLL | None:
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def symbol(lib: ctypes.CDLL, name: str) -> Any | None:
    """The library's 64-bit-integer CBLAS function `name` ("sgemm", "daxpy", ...), or None."""
    for template in SYMBOLS:
        f = getattr(lib, template.format(name), None)
        if f is not None:
            return f
    return None


def _function(lib: ctypes.CDLL, kind: str, real: type, name: str = "gemm") -> Callable | None:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    argtypes = {"gemm": [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, real, ptr,
                         i64, ptr, i64, real, ptr, i64],
                "axpy": [i64, real, ptr, i64, ptr, i64]}[name]
    f = symbol(lib, kind + name)
    if f is not None:
        f.argtypes = argtypes
        f.restype = None
    return f


def _layout(a: np.ndarray) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) of a 2-D array that is C- or F-contiguous."""
    if a.flags.c_contiguous:
        return NO_TRANS, a.shape[1]
    if a.flags.f_contiguous:  # the transpose of a C-contiguous array
        return TRANS, a.shape[0]
    return None


# operands remembered at most: a run passes about two per layer (its delta and velocity
# buffers, for two batch sizes); past this many, something else is calling, so start afresh
MAX_REMEMBERED = 64


def load() -> Callable[..., np.ndarray] | None:
    """The gemm_acc kernel, or None if numpy's BLAS does not offer it (or fails its check)."""
    lib = _library()
    if lib is None:
        return None
    gemms = {np.dtype(np.float32): _function(lib, "s", ctypes.c_float),
             np.dtype(np.float64): _function(lib, "d", ctypes.c_double)}
    if None in gemms.values():
        return None

    # (array, its strides, (layout, address)) by id: the step passes the same delta and
    # velocity buffers every step, and looking an address up costs more than a small GEMM.
    # Weak references: a finished run's buffers are not kept alive here.
    known: dict[int, tuple[weakref.ref, tuple[int, ...], tuple[tuple[int, int] | None, int]]] = {}

    def operand(a: np.ndarray) -> tuple[tuple[int, int] | None, int]:
        hit = known.get(id(a))
        if hit is not None and hit[0]() is a and hit[1] == a.strides:  # (not reshaped in place)
            return hit[2]
        found = (_layout(a), a.ctypes.data)
        if len(known) >= MAX_REMEMBERED:
            known.clear()
        known[id(a)] = (weakref.ref(a), a.strides, found)
        return found

    def gemm_acc(a: np.ndarray, b: np.ndarray, out: np.ndarray, alpha: float,
                 beta: float) -> np.ndarray:
        gemm = gemms.get(out.dtype)
        (lb, pb), (lo, po) = operand(b), operand(out)
        la = _layout(a)
        if (gemm is None or la is None or lb is None or lo is None or lo[0] != NO_TRANS
                or a.dtype != out.dtype or b.dtype != out.dtype or 0 in a.shape):
            out *= beta  # anything unusual: the same result with numpy operations
            out += alpha * (a @ b)
            return out
        (m, k), n = a.shape, b.shape[1]
        gemm(ROW_MAJOR, la[0], lb[0], m, n, k, alpha, a.ctypes.data, la[1], pb, lb[1], beta,
             po, n)
        return out

    return gemm_acc if _self_test(gemm_acc) else None


def _self_test(gemm_acc: Callable[..., np.ndarray]) -> bool:
    """Run each layout and dtype once against numpy before trusting the library."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        a, b = rng.random((5, 3)).astype(dtype), rng.random((5, 4)).astype(dtype)
        out = rng.random((3, 4)).astype(dtype)
        want = 0.5 * out + (-2.0) * (a.T @ b)
        if not np.allclose(gemm_acc(a.T, b, out, -2.0, 0.5), want, rtol=1e-5):
            return False
    return True


def load_axpy() -> Callable[..., Callable[[float], None]] | None:
    """axpy(x, y) -> update(alpha), which does y += alpha * x in one BLAS call (None where the
    library lacks it or fails its check). The arrays' addresses are bound once: the step calls
    it on the same two flat buffers every step.

    The step's w += v covers every weight: NumPy adds on one thread, OpenBLAS's axpy runs on
    the BLAS's threads, which matters when w and v have dropped out of the cache (large batches).
    """
    lib = _library()
    if lib is None:
        return None
    axpys = {np.dtype(np.float32): _function(lib, "s", ctypes.c_float, "axpy"),
             np.dtype(np.float64): _function(lib, "d", ctypes.c_double, "axpy")}
    if None in axpys.values():
        return None

    def axpy(x: np.ndarray, y: np.ndarray) -> Callable[[float], None]:
        f = axpys.get(y.dtype)
        if (f is None or x.dtype != y.dtype or x.shape != y.shape or x.ndim != 1
                or not (x.flags.c_contiguous and y.flags.c_contiguous)):
            def update(alpha: float) -> None:
                y[...] += alpha * x
            return update
        return _BoundAxpy(f, x, y)

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x, y = rng.random(7).astype(dtype), rng.random(7).astype(dtype)
        want = y - 2.0 * x
        axpy(x, y)(-2.0)
        if not np.allclose(y, want, rtol=1e-6):
            return None
    return axpy


class _BoundAxpy:
    """y += alpha * x through BLAS, with the addresses taken once (and the arrays kept alive)."""

    def __init__(self, f: Callable, x: np.ndarray, y: np.ndarray):
        self.f, self.x, self.y = f, x, y
        self.n, self.px, self.py = y.shape[0], x.ctypes.data, y.ctypes.data

    def __call__(self, alpha: float) -> None:
        self.f(self.n, alpha, self.px, 1, self.py, 1)
