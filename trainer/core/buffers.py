"""The fast step's storage: flat parameter buffers with per-layer views, and per-batch-size
work buffers that the backend's kernels write into instead of allocating."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Array = Any


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
            return xp.empty(shape, dtype=like.dtype, device=like.device)

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
    first = arrays[0]
    flat = xp.empty((sum(size(a) for a in arrays),), dtype=first.dtype, device=first.device)
    views: list[Array] = [None] * len(arrays)
    lo = 0
    for j in order:
        a = arrays[j]
        view = xp.reshape(flat[lo:lo + size(a)], a.shape)
        view[...] = a
        views[j] = view
        lo += size(a)
    return flat, views


def size(a: Array) -> int:
    return int(math.prod(a.shape))
