"""trainer/core/elastic.py's warp for the numba backend in three compiled passes, and
trainer/core/augment.py's shifts in one.

The numpy kernel (numpy_elastic.py) runs the array-API warp's ~25 operations one after the
other, each a pass over a batch-sized array. Here the same arithmetic takes three passes:
- the noise: dropout.hash32 of each counter, read as a signed 32-bit integer, in the warp's
  dtype (integer math in int64 with the reference's masking: exact);
- the two Gaussian smoothings: the very np.matmul calls of the numpy kernel, on the same shapes
  and layouts (another GEMM, or a loop, would sum in another order and give other bits);
- one pass per output pixel: its home (turned and scaled where asked, from ElasticWarp.turns),
  plus the field, clipped, floored, its four neighbours in the padded image and the bilinear
  blend, each operation in the reference's order and in the warp's dtype. numba contracts a
  multiply and an add into an FMA only under fastmath, which stays off here (the tests check
  the same bits; tests/test_numba_elastic.py also reads the compiled code for FMAs).

So it returns the same bits as ElasticWarp.warp and the numpy kernel, in float32 and float64.
The shifts that follow (augment.Shifter) are one gather through the shift table: a copy of
values, exact, in place of the array-API code's four batch-sized passes on fresh memory.
This module imports numba, which the `numba` extra installs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from . import HASH32_MULTIPLIER

MASK32 = 0xFFFFFFFF
MIX = HASH32_MULTIPLIER
JIT = {"boundscheck": False, "nogil": True, "error_model": "numpy"}


@njit(**JIT)
def noise_pass(idx: Any, per_image: int, key: int, noise: Any) -> None:
    """noise[r, f, i, c] = hash32 of image idx[i]'s counter f * pixels + r * cols + c (plus
    `key`), as a signed 32-bit integer: ElasticWarp._noise of ElasticWarp.fields."""
    rows, fields, n, cols = noise.shape
    for r in range(rows):
        for f in range(fields):
            for i in range(n):
                start = idx[i] * per_image + f * (rows * cols) + r * cols + key
                for c in range(cols):
                    h = (start + c) & MASK32
                    h = h ^ (h >> 16)
                    h = (h * MIX) & MASK32
                    h = h ^ (h >> 16)
                    h = (h * MIX) & MASK32
                    h = h ^ (h >> 16)
                    noise[r, f, i, c] = h - ((h >> 31) << 32)  # elastic.signed


@njit(**JIT)
def pad_pass(x: Any, padded: Any) -> None:
    """The images into the middle of their background frame (ElasticWarp.warp's `flat`)."""
    n, rows, cols = x.shape[0], padded.shape[1] - 3, padded.shape[2] - 3
    for i in range(n):
        for r in range(rows):
            for c in range(cols):
                padded[i, r + 1, c + 1] = x[i, r * cols + c]


@njit(**JIT)
def sample_pass(smooth: Any, home_r: Any, home_c: Any, cos: Any, sin: Any, grid_r: Any,
                grid_c: Any, consts: Any, turned: bool, padded: Any, out: Any, at: Any,
                fraction_r: Any, fraction_c: Any) -> None:
    """Each output pixel from its four neighbours: ElasticWarp.homes, .sources and .warp.
    consts holds centre row, centre column, the row and column clips' tops and 0, in the
    dtype, so that no operation here leaves it. Each image row takes two loops: where its
    pixels come from (into at, fraction_r and fraction_c: this one the compiler vectorizes),
    then the gathers and the blend."""
    rows, n, cols = smooth.shape[0], smooth.shape[2], smooth.shape[3]
    centre_r, centre_c, top_r, top_c, zero = consts[0], consts[1], consts[2], consts[3], consts[4]
    width = cols + 3
    flat = padded.reshape(-1)
    for r in range(rows):
        for i in range(n):
            ci, si = (cos[i], sin[i]) if turned else (zero, zero)
            start = i * padded.shape[1] * width
            for c in range(cols):
                if turned:  # cos * gr + sin * gc + centre, cos * gc - sin * gr + centre
                    hr = ci * grid_r[r] + si * grid_c[c] + centre_r
                    hc = ci * grid_c[c] - si * grid_r[r] + centre_c
                else:
                    hr, hc = home_r[r, c], home_c[r, c]
                sr = smooth[r, 0, i, c] + hr
                sc = smooth[r, 1, i, c] + hc
                # np.clip: the larger of it and 0 (kept only if greater), then the smaller
                sr = sr if sr > zero else zero
                sr = sr if sr < top_r else top_r
                sc = sc if sc > zero else zero
                sc = sc if sc < top_c else top_c
                r0, c0 = np.floor(sr), np.floor(sc)
                fraction_r[c], fraction_c[c] = sr - r0, sc - c0
                at[c] = start + int(r0) * width + int(c0)  # the top-left neighbour
            row = out[i, r * cols:(r + 1) * cols]
            for c in range(cols):
                k, fr, fc = at[c], fraction_r[c], fraction_c[c]
                a, b = flat[k], flat[k + 1]
                d, e = flat[k + width], flat[k + width + 1]
                top, bottom = a + fc * (b - a), d + fc * (e - d)
                row[c] = top + fr * (bottom - top)


class ElasticKernel:
    """Made from an ElasticWarp (its constants); called as (x, idx, key) -> the warped batch,
    an array this kernel owns and overwrites on its next call (as numpy_elastic's)."""

    def __init__(self, warp: Any) -> None:
        self.warp = warp
        self.rows, self.cols = warp.shape
        self.turned = bool(warp.rotate or warp.scale)
        rows, cols = warp.shape
        dtype = np.asarray(warp.g_rows).dtype
        self.home_r, self.home_c = (np.ascontiguousarray(np.asarray(h).reshape(rows, cols))
                                    for h in (warp.home_r, warp.home_c))
        self.grid_r = np.ascontiguousarray(np.asarray(warp.grid_r)[:, 0, 0])
        self.grid_c = np.ascontiguousarray(np.asarray(warp.grid_c)[0, 0, :])
        # the clip's bounds and the centre are exact in any float: the reference's Python
        # floats become these very values of the dtype
        self.consts = np.array([*warp.centre, rows + 1, cols + 1, 0.0], dtype=dtype)
        self.unturned = np.zeros(0, dtype=dtype)
        self.buffers: dict[tuple[int, np.dtype], dict[str, np.ndarray]] = {}

    def _buffers(self, n: int, dtype: np.dtype) -> dict[str, np.ndarray]:
        """The work arrays of a batch of n (made once per batch size and dtype)."""
        if (n, dtype) not in self.buffers:
            rows, cols = self.rows, self.cols
            self.buffers[n, dtype] = {
                "noise": np.empty((rows, 2, n, cols), dtype),
                "a": np.empty((rows, 2 * n * cols), dtype),
                "smooth": np.empty((rows * 2 * n, cols), dtype),
                "padded": np.full((n, rows + 3, cols + 3), self.warp.background, dtype=dtype),
                "out": np.empty((n, rows * cols), dtype),
                "at": np.empty(cols, np.int64),
                "fraction_r": np.empty(cols, dtype),
                "fraction_c": np.empty(cols, dtype),
            }
        return self.buffers[n, dtype]

    def __call__(self, x: np.ndarray, idx: np.ndarray, key: int) -> np.ndarray:
        warp, rows, cols, n = self.warp, self.rows, self.cols, x.shape[0]
        b = self._buffers(n, x.dtype)
        idx = np.asarray(idx, dtype=np.int64)
        noise_pass(idx, warp.per_image, key, b["noise"])
        # the smoothings: numpy_elastic.ElasticKernel's calls, the same shapes and layouts
        np.matmul(warp.g_rows, b["noise"].reshape(rows, 2 * n * cols), out=b["a"])
        np.matmul(b["a"].reshape(rows * 2 * n, cols), warp.g_cols, out=b["smooth"])
        if self.turned:
            cos, sin = (np.ascontiguousarray(t.reshape(n)) for t in warp.turns(idx, x.dtype, key))
        else:
            cos = sin = self.unturned
        pad_pass(x, b["padded"])
        sample_pass(b["smooth"].reshape(rows, 2, n, cols), self.home_r, self.home_c, cos, sin,
                    self.grid_r, self.grid_c, self.consts, self.turned, b["padded"], b["out"],
                    b["at"], b["fraction_r"], b["fraction_c"])
        return b["out"]


@njit(**JIT)
def shift_pass(x: Any, idx: Any, shifts: Any, table: Any, background: Any, out: Any) -> None:
    """Row i of `out` is x's row i through the table row of its image's shift: each output
    pixel the input pixel the table names, or the background (augment.shift)."""
    n, pixels = out.shape
    bg = background[0]
    for i in range(n):
        row = table[shifts[idx[i]]]
        for p in range(pixels):
            j = row[p]
            out[i, p] = x[i, j] if j < pixels else bg


class ShiftKernel:
    """Made from a Shifter (its table); called as (x, idx, shifts) -> the shifted batch, one
    gather in place of augment.shift's four batch-sized passes (each on fresh memory), into an
    array this kernel owns and overwrites on its next call."""

    def __init__(self, shifter: Any) -> None:
        self.table = np.ascontiguousarray(shifter.table, dtype=np.int64)
        self.background = shifter.background
        self.buffers: dict[tuple[int, np.dtype], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, x: np.ndarray, idx: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if (n, x.dtype) not in self.buffers:  # the background as the reference's full() has it
            self.buffers[n, x.dtype] = (np.full(1, self.background, dtype=x.dtype),
                                        np.empty((n, self.table.shape[1]), x.dtype))
        background, out = self.buffers[n, x.dtype]
        shift_pass(x, np.asarray(idx, dtype=np.int64), shifts, self.table, background, out)
        return out
