"""Random shifts of the training images, per sample and per epoch, done on the device.

The shifts are drawn on the host from the run's seed (so every backend sees the same images)
and applied with array-API gathers: each shift is a table row giving, for every output pixel,
the input pixel it comes from, or the background (the standardized value of a blank pixel).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

Array = Any


def shift_table(rows: int, cols: int, max_shift: int) -> np.ndarray:
    """(S, rows*cols) source pixel per output pixel for each shift; rows*cols = background."""
    table = []
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            sr, sc = r - dy, c - dx  # output (r, c) shows input (r - dy, c - dx)
            inside = (sr >= 0) & (sr < rows) & (sc >= 0) & (sc < cols)
            table.append(np.where(inside, sr * cols + sc, rows * cols).reshape(-1))
    return np.stack(table).astype(np.int64)


class Shifter:
    """Shift each training image by its own (dx, dy) in [-max_shift, max_shift]^2 this epoch."""

    def __init__(self, xp: Any, asarray: Any, shape: tuple[int, int], max_shift: int,
                 background: float, dtype: Any, kernel: Any = None) -> None:
        self.xp, self.asarray, self.dtype = xp, asarray, dtype
        self.table = asarray(shift_table(*shape, max_shift))
        self.pixels = shape[0] * shape[1]
        self.background = background
        self.shifts: Array = None
        self._offsets: dict[int, Array] = {}
        self.kernel = kernel(self) if kernel is not None else None  # a backend's Kernels.shift

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """An epoch's shifts: an index into the table for each of the n images."""
        return rng.integers(0, self.table.shape[0], n).astype(np.int64)

    def use(self, ids: np.ndarray) -> None:
        """Shift by `ids` (from `draw`) from now on."""
        self.shifts = self.asarray(ids)

    def __call__(self, x: Array, idx: Array) -> Array:
        """The batch `x` (rows `idx` of the training set), each row shifted by its own shift."""
        if self.kernel is not None:
            return self.kernel(x, idx, self.shifts)
        n = x.shape[0]
        if n not in self._offsets:
            self._offsets[n] = offsets(self.xp, n, self.pixels, device(x))
        return shift(x, idx, self.table, self.shifts, self.background, self._offsets[n])


def offsets(xp: Any, n: int, pixels: int, where: Any = None) -> Array:
    """(n, 1): where each of n rows of pixels + 1 values starts in their flattened array (on
    device `where`; None: the default one)."""
    return xp.reshape(xp.arange(n, device=where) * (pixels + 1), (n, 1))


def shift(x: Array, idx: Array, table: Array, shifts: Array, background: float,
          starts: Array) -> Array:
    """Rows `idx` of the training set (`x`, already gathered), each shifted by its row of
    `table` (the epoch's `shifts[idx]`); `starts` from `offsets`. A function of arrays only,
    so that a compiled step can trace it."""
    xp = array_namespace(x, table)
    n, pixels = x.shape[0], table.shape[1]
    src = xp.take(table, xp.take(shifts, idx, axis=0), axis=0)
    bg = xp.full((n, 1), background, dtype=x.dtype, device=device(x))
    flat = xp.reshape(xp.concat([x, bg], axis=1), (-1,))
    return xp.reshape(xp.take(flat, xp.reshape(src + starts, (-1,))), (n, pixels))


Augmentation = Callable[[Array, Array], Array]


def chain(*augmentations: Augmentation | None) -> Augmentation | None:
    """One augmentation (x, idx) -> x that applies the given ones in order (None: skipped)."""
    steps = [a for a in augmentations if a is not None]
    if len(steps) <= 1:
        return steps[0] if steps else None

    def chained(x: Array, idx: Array) -> Array:
        for augment in steps:
            x = augment(x, idx)
        return x
    return chained
