"""Elastic distortions of the training images (Simard, Steinkraus and Platt, ICDAR 2003), on the
device, in array-API operations.

Each image gets a random displacement field: dx and dy uniform in [-1, 1) at every pixel,
smoothed by a Gaussian of width sigma (zero outside the image) and scaled by alpha, plus, where
asked, a small random rotation and scaling about the image's centre. The output pixel (r, c)
shows the input at (r + dy, c + dx), interpolated bilinearly, with the background outside.

The random numbers come from dropout's counter-based hash of (seed, epoch, training row,
element), not from a generator with state: every backend warps the same image the same way in
the same epoch, and a run resumed mid-epoch warps exactly as the one it continues. The Gaussian
is separable, so the smoothing is G_rows @ F @ G_cols: two matmuls for the whole batch; the
sampling is four `take`s on the flattened, padded batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import device

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


def signed(xp: Any, h: Array) -> Array:
    """32-bit hashes (values in [0, 2**32), of any integer type wide enough) read as
    two's-complement int32 values, in int64."""
    h = xp.astype(h, xp.int64)
    return h - ((h >> 31) << 32)


class ElasticWarp:
    """Warp each training image by its own smooth random field, new every epoch.

    Called as warp(x, idx): x the (n, rows*cols) batch, idx its rows in the training set (which
    pick the images' random numbers). `use(epoch)` before an epoch's first batch.

    The noise of image i's field f (0: dy, 1: dx) at pixel (r, c) is hash32 of its counter
    idx[i] * per_image + f * rows * cols + r * cols + c (plus the epoch's key), read as a signed
    32-bit integer over 2**31: uniform in [-1, 1). The fields are laid out (rows, 2, n, cols), so
    that both smoothings are single 2-D matmuls of the whole batch (G_rows @ F with all the
    fields side by side, F @ G_cols with them stacked) and each of dy and dx is one contiguous
    block per row. A backend's `elastic` kernel (backends/numpy_elastic.py) runs these very
    operations into buffers it keeps, with the same bits.
    """

    def __init__(self, xp: Any, asarray: Any, shape: tuple[int, int], *, alpha: float,
                 sigma: float, rotate: float, scale: float, background: float, seed: int,
                 dtype: Any, hash_kernel: Any = None, kernel: Any = None) -> None:
        self.xp, self.shape, self.seed = xp, shape, seed
        self.rotate, self.scale = math.radians(rotate), scale
        self.background, self.hash = background, hash_kernel or hash32
        rows, cols = shape
        self.pixels = rows * cols
        # values per image: dy at each pixel, dx at each pixel, then rotation and scaling
        self.per_image = 2 * self.pixels + 2
        # alpha and the noise's 2**-31 folded into the row smoothing (a power of two: exact)
        self.g_rows = xp.astype(asarray(alpha * 2.0**-31 * gaussian_matrix(rows, sigma)), dtype)
        self.g_cols = xp.astype(asarray(gaussian_matrix(cols, sigma)), dtype)
        # each field's counter offsets in the (rows, 2, 1, cols) layout
        r, f, c = np.meshgrid(np.arange(rows), np.arange(2), np.arange(cols), indexing="ij")
        self.elements = asarray((f * self.pixels + r * cols + c).reshape(rows, 2, 1, cols))
        self.extra = asarray(np.array([2 * self.pixels, 2 * self.pixels + 1], dtype=np.int64))
        # each output pixel's coordinates relative to the centre, (rows, 1, cols); + centre + 1
        # (the background frame of the padded image) gives where it is in the padded image
        self.centre = ((rows - 1) / 2 + 1, (cols - 1) / 2 + 1)
        grid_r = np.broadcast_to(np.arange(rows)[:, None, None] - (rows - 1) / 2, (rows, 1, cols))
        grid_c = np.broadcast_to(np.arange(cols)[None, None, :] - (cols - 1) / 2, (rows, 1, cols))
        self.grid_r, self.grid_c = (xp.astype(asarray(np.ascontiguousarray(g)), dtype)
                                    for g in (grid_r, grid_c))
        self.home_r, self.home_c = (
            xp.astype(asarray(np.ascontiguousarray(g + centre)), dtype)
            for g, centre in zip((grid_r, grid_c), self.centre, strict=True))
        self.key: int | None = None
        self.kernel = kernel(self) if kernel is not None else None

    def use(self, epoch: int) -> None:
        """Warp with epoch `epoch`'s fields from now on."""
        self.key = epoch_key(self.seed, epoch)

    def current_key(self) -> int:
        """The key of the epoch `use` named."""
        if self.key is None:
            raise RuntimeError("ElasticWarp.use(epoch) must come before the first batch")
        return self.key

    def _noise(self, counter: Array, dtype: Any, key: Any) -> Array:
        """hash32 of each counter + key as a signed 32-bit integer, in `dtype`."""
        xp = self.xp
        return xp.astype(signed(xp, self.hash((counter + key) & MASK32)), dtype)

    def fields(self, idx: Array, dtype: Any, key: Any) -> Array:
        """(rows, 2, n, cols): the images' smoothed fields, dy then dx, scaled by alpha."""
        xp, (rows, cols), n = self.xp, self.shape, idx.shape[0]
        noise = self._noise(xp.reshape(idx, (1, 1, -1, 1)) * self.per_image + self.elements,
                            dtype, key)
        a = xp.matmul(self.g_rows, xp.reshape(noise, (rows, 2 * n * cols)))
        return xp.reshape(xp.matmul(xp.reshape(a, (rows * 2 * n, cols)), self.g_cols),
                          (rows, 2, n, cols))

    def homes(self, idx: Array, dtype: Any, key: Any) -> tuple[Array, Array]:
        """Where each output pixel sits before the field moves it, in the padded image: the
        grid, turned and scaled about the centre when asked; (rows, 1 or n, cols)."""
        if not (self.rotate or self.scale):
            return self.home_r, self.home_c
        cos, sin = self.turns(idx, dtype, key)
        gr, gc = self.grid_r, self.grid_c  # source = s R(theta) (r, c) + centre + field
        return (cos * gr + sin * gc + self.centre[0], cos * gc - sin * gr + self.centre[1])

    def turns(self, idx: Array, dtype: Any, key: Any) -> tuple[Array, Array]:
        """s cos(theta) and s sin(theta) of each image's rotation theta and scaling s,
        (1, n, 1) (a backend's kernel that blends them into its own pass takes them here)."""
        xp = self.xp
        u = self._noise(xp.reshape(idx, (-1, 1)) * self.per_image + self.extra, dtype, key)
        u = u * 2.0**-31  # uniform in [-1, 1)
        theta = xp.reshape(u[:, 0] * self.rotate, (1, -1, 1))
        s = 1.0 + xp.reshape(u[:, 1] * self.scale, (1, -1, 1))
        return s * xp.cos(theta), s * xp.sin(theta)

    def sources(self, idx: Array, dtype: Any, key: Any) -> tuple[Array, Array]:
        """(rows, n, cols) row and column, in the padded image, that each output pixel shows."""
        smooth = self.fields(idx, dtype, key)
        home_r, home_c = self.homes(idx, dtype, key)
        return smooth[:, 0, ...] + home_r, smooth[:, 1, ...] + home_c

    def __call__(self, x: Array, idx: Array) -> Array:
        """The batch `x` (rows `idx` of the training set), each image warped by its own field
        of the epoch `use` named."""
        key = self.current_key()
        return self.kernel(x, idx, key) if self.kernel is not None else self.warp(x, idx, key)

    def warp(self, x: Array, idx: Array, key: Any) -> Array:
        """__call__ with the fields of `key` (an epoch_key; an integer array inside a compiled
        function), in array-API operations only."""
        xp, (rows, cols), n = self.xp, self.shape, x.shape[0]
        src_r, src_c = self.sources(idx, x.dtype, key)
        # pad with a frame of background: one pixel before, two after, so that every source
        # clipped to [0, rows + 1] has its four neighbours inside (a source beyond the frame
        # sees only background either way)
        width = cols + 3
        where = device(x)  # (None inside a jax trace: the default device)

        def frame(r: int, c: int) -> Array:
            return xp.full((n, r, c), self.background, dtype=x.dtype, device=where)

        # built by concatenation, not assignment: arrays that cannot be written in place (JAX's)
        # warp too
        middle = xp.concat([frame(rows, 1), xp.reshape(x, (n, rows, cols)), frame(rows, 2)],
                           axis=2)
        flat = xp.reshape(xp.concat([frame(1, width), middle, frame(2, width)], axis=1), (-1,))
        src_r = xp.clip(src_r, 0.0, float(rows + 1))
        src_c = xp.clip(src_c, 0.0, float(cols + 1))
        r0, c0 = xp.floor(src_r), xp.floor(src_c)
        fr, fc = src_r - r0, src_c - c0
        # the top-left neighbour: its place in its image is a small whole number (exact in
        # any float), the image's start an integer
        image = xp.reshape(xp.arange(n, dtype=xp.int64, device=where) * ((rows + 3) * width),
                           (1, n, 1))
        at = xp.reshape(xp.astype(r0 * width + c0, xp.int64) + image, (-1,))
        shape = (rows, n, cols)
        a, b = (xp.reshape(xp.take(flat, at + k), shape) for k in (0, 1))
        c, d = (xp.reshape(xp.take(flat, at + k), shape) for k in (width, width + 1))
        top, bottom = a + fc * (b - a), c + fc * (d - c)
        out = top + fr * (bottom - top)  # (rows, n, cols)
        return xp.reshape(xp.permute_dims(out, (1, 0, 2)), (n, self.pixels))
