"""The fast step's storage: flat parameter buffers with per-layer views, and per-batch-size
work buffers that the backend's kernels write into instead of allocating."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Array = Any
ALIGN_BYTES = 64  # a cache line, and the width of an AVX-512 load


@dataclass(frozen=True)
class BatchBuffers:
    """What one batch size reuses from step to step."""

    x: Array  # the gathered inputs
    outs: list[Array]  # each layer's output; the last one (classes, n) with transposed logits
    downs: list[Array]  # the gradient flowing down into each hidden layer's output
    scratch: list[Array]  # for each hidden layer's activation derivative

    @classmethod
    def empty(cls, xp: Any, sizes: Sequence[int], n: int, like: Array,
              transposed: bool) -> BatchBuffers:
        """Uninitialised buffers for batches of `n` rows of a network with layer `sizes`."""
        def empty(shape: tuple[int, int]) -> Array:
            return aligned_empty(xp, shape, like)

        classes, hidden = sizes[-1], sizes[1:-1]
        return cls(
            x=empty((n, sizes[0])),
            outs=[*(empty((n, h)) for h in hidden),
                  empty((classes, n) if transposed else (n, classes))],
            downs=[empty((n, h)) for h in hidden],
            scratch=[empty((n, h)) for h in hidden])


def flatten(xp: Any, arrays: Sequence[Array], order: Sequence[int]
            ) -> tuple[Array, list[Array]]:
    """One flat buffer holding copies of `arrays` in `order`, and views of it shaped like them
    (in the arrays' own order): one update then covers every layer."""
    flat = aligned_empty(xp, (sum(size(a) for a in arrays),), arrays[0])
    views: list[Array] = [None] * len(arrays)
    lo = 0
    for j in order:
        a = arrays[j]
        view = xp.reshape(flat[lo:lo + size(a)], a.shape)
        view[...] = a
        views[j] = view
        lo += size(a)
    return flat, views


def aligned_empty(xp: Any, shape: tuple[int, ...], like: Array) -> Array:
    """`xp.empty(shape)` like `like`, starting on a cache line where the array shows its address
    (NumPy's `__array_interface__`; device allocators align on their own). NumPy aligns only to
    16 bytes, so where a buffer started used to move with what was allocated before it, and the
    BLAS's small GEMMs with it: a few per cent at batch 32."""
    n = math.prod(shape)
    interface = getattr(xp.empty((0,), dtype=like.dtype), "__array_interface__", None)
    if interface is None:
        return xp.empty(shape, dtype=like.dtype, device=like.device)
    raw = xp.empty((n + ALIGN_BYTES,), dtype=like.dtype, device=like.device)
    skip = (-raw.__array_interface__["data"][0] % ALIGN_BYTES) // raw.itemsize
    return xp.reshape(raw[skip:skip + n], shape)


def size(a: Array) -> int:
    return int(math.prod(a.shape))
