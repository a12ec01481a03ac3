"""Dropout masks from a counter-based hash, so every backend draws the very same masks.

A mask element is kept when hash32(counter + key * golden) >= p * 2**32, where the counter is the
element's position in the batch and the key mixes the seed, the global step and the layer. The
hash (Thomas Mueller's 32-bit integer mixer) is computed in int64 with explicit masking, so it
needs nothing beyond the array API's integer operations and never overflows; backends that
offer a faster `hash32` kernel (unsigned 32-bit arithmetic) must return the same bits. Drawing
on the host instead would cost a host-to-device copy of every mask on a GPU.
"""

from __future__ import annotations

from typing import Any

Array = Any
MASK32 = 0xFFFFFFFF
MIX = 0x45D9F3B  # < 2**31: products with 32-bit values stay below 2**63
GOLDEN = 0x9E3779B1


def hash32(xp: Any, x: Array) -> Array:
    """Mix each 32-bit value of int64 array `x` (values in [0, 2**32))."""
    x = x ^ (x >> 16)
    x = (x * MIX) & MASK32
    x = x ^ (x >> 16)
    x = (x * MIX) & MASK32
    return x ^ (x >> 16)


def step_key(seed: int, global_step: int, layer: int) -> int:
    """A 32-bit key for one layer's mask at one step of one run."""
    k = (seed * 1_000_003 + global_step) * 64 + layer
    return (k * GOLDEN) & MASK32


def keep_mask(xp: Any, counter: Array, key: int, p: float, dtype: Any,
              hash_kernel: Any = None) -> Array:
    """Inverted-dropout multipliers: 1/(1-p) where kept, 0 where dropped; shape of `counter`.

    `counter` is int64 arange over the mask's elements (in the mask's shape).
    """
    x = (counter + key) & MASK32
    h = hash_kernel(x) if hash_kernel else hash32(xp, x)
    threshold = int(p * 2**32)
    return xp.astype(h >= threshold, dtype) * (1.0 / (1.0 - p))
