"""trainer/core/elastic.py's warp on NumPy, into buffers kept from one batch to the next.

The array-API warp allocates some twenty arrays of a batch's size per call. On NumPy each one
over glibc's mmap threshold is fresh memory the kernel must fault in page by page, which cost
more than the arithmetic (4-7 ms per batch of 128 against ~1 ms here). This kernel runs the
same operations in the same order, each with `out=`, so it returns the same bits: the counters
in uint32 (wrapping is the reference's `& MASK32`), the hash in place, the four neighbours taken
from offset views of the padded batch instead of from shifted index arrays, and the result
written through a transposed view of the output instead of transposed afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import HASH32_MULTIPLIER


class ElasticKernel:
    """Made from an ElasticWarp (its constants); called as (x, idx, key) -> the warped batch,
    an array this kernel owns and overwrites on its next call."""

    def __init__(self, warp: Any) -> None:
        self.warp = warp
        self.rows, self.cols = warp.shape
        # the counters as (idx * per_image + key + c) + (f * pixels + r * cols): a small
        # (n, cols) part and a per-(r, f) offset, so the big sum runs along whole rows
        elements = np.asarray(warp.elements)
        self.offsets = elements[..., :1].astype(np.uint32)  # (rows, 2, 1, 1): f * pixels + r * cols
        self.columns = np.arange(self.cols, dtype=np.uint32)
        self.buffers: dict[tuple[int, np.dtype], dict[str, np.ndarray]] = {}

    def _buffers(self, n: int, dtype: np.dtype) -> dict[str, np.ndarray]:
        """The work arrays of a batch of n (made once per batch size and dtype)."""
        if (n, dtype) not in self.buffers:
            rows, cols = self.rows, self.cols
            width = cols + 3
            shape = (rows, n, cols)
            self.buffers[n, dtype] = {
                "counter": np.empty((rows, 2, n, cols), np.uint32),
                "scratch": np.empty((rows, 2, n, cols), np.uint32),
                "noise": np.empty((rows, 2, n, cols), dtype),
                "a": np.empty((rows, 2 * n * cols), dtype),
                "smooth": np.empty((rows * 2 * n, cols), dtype),
                "padded": np.full((n, rows + 3, width), self.warp.background, dtype=dtype),
                "image": (np.arange(n, dtype=np.intp) * ((rows + 3) * width)).reshape(1, n, 1),
                **{k: np.empty(shape, dtype) for k in ("src_r", "src_c", "r0", "c0",
                                                        "a00", "a01", "a10", "a11")},
                "at": np.empty(shape, np.intp),
                "out": np.empty((n, rows * cols), dtype),
            }
        return self.buffers[n, dtype]

    def __call__(self, x: np.ndarray, idx: np.ndarray, key: int) -> np.ndarray:
        warp, rows, cols, n = self.warp, self.rows, self.cols, x.shape[0]
        b = self._buffers(n, x.dtype)
        counter, scratch, noise = b["counter"], b["scratch"], b["noise"]
        # the fields: elastic.ElasticWarp.fields, the counters in wrapping uint32 (= & MASK32)
        start = idx.astype(np.uint32) * np.uint32(warp.per_image) + np.uint32(key)
        np.add(self.offsets, (start[:, None] + self.columns)[None, None], out=counter)
        for _ in range(2):  # dropout.hash32
            np.right_shift(counter, 16, out=scratch)
            np.bitwise_xor(counter, scratch, out=counter)
            np.multiply(counter, np.uint32(HASH32_MULTIPLIER), out=counter)
        np.right_shift(counter, 16, out=scratch)
        np.bitwise_xor(counter, scratch, out=counter)
        np.copyto(noise, counter.view(np.int32))  # elastic.signed
        np.matmul(warp.g_rows, noise.reshape(rows, 2 * n * cols), out=b["a"])
        np.matmul(b["a"].reshape(rows * 2 * n, cols), warp.g_cols, out=b["smooth"])
        smooth = b["smooth"].reshape(rows, 2, n, cols)
        # the sources and their neighbours: ElasticWarp.sources and __call__
        home_r, home_c = warp.homes(idx, x.dtype, key)
        src_r, src_c, r0, c0 = (b[k] for k in ("src_r", "src_c", "r0", "c0"))
        for src, field, home, top, whole in ((src_r, 0, home_r, rows + 1, r0),
                                             (src_c, 1, home_c, cols + 1, c0)):
            np.add(smooth[:, field], home, out=src)
            np.clip(src, 0.0, float(top), out=src)
            np.floor(src, out=whole)
            np.subtract(src, whole, out=src)  # the fraction, from here on
        width = cols + 3
        padded = b["padded"]  # its frame is the background, written once
        padded[:, 1:rows + 1, 1:cols + 1] = x.reshape(n, rows, cols)
        np.multiply(r0, width, out=r0)
        np.add(r0, c0, out=r0)
        at = b["at"]
        np.copyto(at, r0, casting="unsafe")
        np.add(at, b["image"], out=at)
        flat = padded.reshape(-1)
        a00, a01, a10, a11 = (b[k] for k in ("a00", "a01", "a10", "a11"))
        for corner, offset in ((a00, 0), (a01, 1), (a10, width), (a11, width + 1)):
            np.take(flat[offset:], at, out=corner, mode="clip")  # in range: clip checks nothing
        fr, fc = src_r, src_c
        # top = a00 + fc (a01 - a00), bottom = a10 + fc (a11 - a10), top + fr (bottom - top)
        np.subtract(a01, a00, out=a01)
        np.multiply(fc, a01, out=a01)
        np.add(a00, a01, out=a00)
        np.subtract(a11, a10, out=a11)
        np.multiply(fc, a11, out=a11)
        np.add(a10, a11, out=a10)
        np.subtract(a10, a00, out=a10)
        np.multiply(fr, a10, out=a10)
        out = b["out"]
        np.add(a00, a10, out=out.reshape(n, rows, cols).transpose(1, 0, 2))
        return out
