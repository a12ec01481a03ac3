"""Elastic distortions of the training images (Simard, Steinkraus and Platt, ICDAR 2003), on the
device, in array-API operations.

Each image gets a random displacement field: dx and dy uniform in [-1, 1) at every pixel,
smoothed by a Gaussian of width sigma (zero outside the image) and scaled by alpha, plus, where
asked, a small random rotation and scaling about the image's centre. The output pixel (r, c)
shows the input at (r + dy, c + dx), interpolated bilinearly, with the background outside.

The random numbers come from dropout's counter-based hash of (seed, epoch, training row,
element), not from a generator with state: every backend warps the same image the same way in
the same epoch, and a run resumed mid-epoch warps exactly as the one it continues. The Gaussian
is separable, so the smoothing is two small matmuls per field (G_rows @ F @ G_cols); the
sampling is four `take`s on the flattened, padded batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trainer.core.dropout import GOLDEN, MASK32, hash32

Array = Any
TRUNCATE = 4.0  # the Gaussian is cut at 4 sigma (scipy.ndimage's default)
SALT = 0x5EED_E1A5  # the warp's keys differ from dropout's for the same (seed, counter)
EPOCH_STRIDE = 1_000_003  # epochs per seed before two seeds' keys could meet


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) float64: row i is the Gaussian centred on i, truncated at TRUNCATE sigma and
    normalised over its full support, so a smoothing by it treats the outside as zero."""
    radius = int(TRUNCATE * sigma + 0.5)
    k = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    w /= w.sum()
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    return np.where(np.abs(d) <= radius, w[np.clip(d + radius, 0, 2 * radius)], 0.0)


def epoch_key(seed: int, epoch: int) -> int:
    """The 32-bit key of one epoch's warps in one run."""
    return ((seed * EPOCH_STRIDE + epoch) * GOLDEN + SALT) & MASK32


class ElasticWarp:
    """Warp each training image by its own smooth random field, new every epoch.

    Called as warp(x, idx): x the (n, rows*cols) batch, idx its rows in the training set (which
    pick the images' random numbers). `use(epoch)` before an epoch's first batch.
    """

    def __init__(self, xp: Any, asarray: Any, shape: tuple[int, int], *, alpha: float,
                 sigma: float, rotate: float, scale: float, background: float, seed: int,
                 dtype: Any, hash_kernel: Any = None) -> None:
        self.xp, self.shape, self.seed = xp, shape, seed
        self.rotate, self.scale = math.radians(rotate), scale
        self.background, self.hash = background, hash_kernel or hash32
        rows, cols = shape
        self.pixels = rows * cols
        # values per image: dy at each pixel, dx at each pixel, then rotation and scaling
        self.per_image = 2 * self.pixels + 2
        # alpha folded into the row smoothing: one pass fewer over the fields
        self.g_rows = xp.astype(asarray(alpha * gaussian_matrix(rows, sigma)), dtype)
        self.g_cols = xp.astype(asarray(gaussian_matrix(cols, sigma)), dtype)
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        # coordinates relative to the centre; +1 for the background frame of the padded image
        self.centre = ((rows - 1) / 2 + 1, (cols - 1) / 2 + 1)
        self.grid_r = xp.astype(asarray((r - (rows - 1) / 2).reshape(-1)), dtype)
        self.grid_c = xp.astype(asarray((c - (cols - 1) / 2).reshape(-1)), dtype)
        self.elements = asarray(np.arange(self.per_image, dtype=np.int64))
        self.key: int | None = None

    def use(self, epoch: int) -> None:
        """Warp with epoch `epoch`'s fields from now on."""
        self.key = epoch_key(self.seed, epoch)

    def uniform(self, idx: Array, dtype: Any) -> Array:
        """(n, per_image) numbers uniform in [-1, 1): hash32 of row * per_image + element."""
        xp = self.xp
        if self.key is None:
            raise RuntimeError("ElasticWarp.use(epoch) must come before the first batch")
        counter = xp.reshape(idx, (-1, 1)) * self.per_image + self.elements
        h = self.hash((counter + self.key) & MASK32)
        return xp.astype(h, dtype) * (2.0 / 2**32) - 1.0

    def sources(self, idx: Array, dtype: Any) -> tuple[Array, Array]:
        """(n, rows*cols) row and column, in the padded image, that each output pixel shows."""
        xp, (rows, cols), n = self.xp, self.shape, idx.shape[0]
        u = self.uniform(idx, dtype)
        fields = xp.reshape(u[:, :2 * self.pixels], (2 * n, rows, cols))
        smooth = xp.reshape(xp.matmul(xp.matmul(self.g_rows, fields), self.g_cols),
                            (n, 2 * self.pixels))
        dy, dx = smooth[:, :self.pixels], smooth[:, self.pixels:]
        gr, gc = self.grid_r, self.grid_c
        if self.rotate or self.scale:  # about the centre: source = s R(theta) (r, c) + field
            theta = u[:, -2:-1] * self.rotate
            s = 1.0 + u[:, -1:] * self.scale
            cos, sin = s * xp.cos(theta), s * xp.sin(theta)
            gr, gc = cos * gr + sin * gc, cos * gc - sin * gr
        return gr + dy + self.centre[0], gc + dx + self.centre[1]

    def __call__(self, x: Array, idx: Array) -> Array:
        """The batch `x` (rows `idx` of the training set), each image warped by its own field."""
        xp, (rows, cols), n = self.xp, self.shape, x.shape[0]
        src_r, src_c = self.sources(idx, x.dtype)
        # pad with a frame of background: one pixel before, two after, so that every source
        # clipped to [0, rows + 1] has its four neighbours inside (a source beyond the frame
        # sees only background either way)
        width = cols + 3
        def frame(r: int, c: int) -> Array:
            return xp.full((n, r, c), self.background, dtype=x.dtype, device=x.device)

        # built by concatenation, not assignment: arrays that cannot be written in place (JAX's)
        # warp too
        middle = xp.concat([frame(rows, 1), xp.reshape(x, (n, rows, cols)), frame(rows, 2)],
                           axis=2)
        flat = xp.reshape(xp.concat([frame(1, width), middle, frame(2, width)], axis=1), (-1,))
        src_r = xp.clip(src_r, 0.0, float(rows + 1))
        src_c = xp.clip(src_c, 0.0, float(cols + 1))
        r0, c0 = xp.astype(src_r, xp.int64), xp.astype(src_c, xp.int64)  # floor: both >= 0
        fr, fc = src_r - xp.astype(r0, x.dtype), src_c - xp.astype(c0, x.dtype)
        image = xp.reshape(xp.arange(n, dtype=xp.int64, device=x.device) * ((rows + 3) * width),
                           (n, 1))
        at = xp.reshape(r0 * width + c0 + image, (-1,))
        shape = (n, self.pixels)
        a, b = (xp.reshape(xp.take(flat, at + k), shape) for k in (0, 1))
        c, d = (xp.reshape(xp.take(flat, at + k), shape) for k in (width, width + 1))
        top, bottom = a + fc * (b - a), c + fc * (d - c)
        return top + fr * (bottom - top)
