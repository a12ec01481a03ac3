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

from trainer.backends import HASH32_MULTIPLIER as MIX

Array = Any
MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B1
# A step key numbers (seed, global step, layer) without collisions: a prime stride between the
# seeds' step counters (runs longer than a million steps would only share keys across seeds), and
# room for up to MAX_LAYERS layers per step.
SEED_STRIDE = 1_000_003
MAX_LAYERS = 64


def hash32(x: Array) -> Array:
    """Mix each 32-bit value of int64 array `x` (values in [0, 2**32)): Thomas Mueller's mixer,
    whose backend kernels (`Kernels.hash32`) share MIX with it."""
    x = x ^ (x >> 16)
    x = (x * MIX) & MASK32
    x = x ^ (x >> 16)
    x = (x * MIX) & MASK32
    return x ^ (x >> 16)


def step_key(seed: int, global_step: int, layer: int) -> int:
    """A 32-bit key for one layer's mask at one step of one run."""
    k = (seed * SEED_STRIDE + global_step) * MAX_LAYERS + layer
    return (k * GOLDEN) & MASK32


def keep_mask(xp: Any, counter: Array, key: int, p: float, dtype: Any,
              hash_kernel: Any = None) -> Array:
    """Inverted-dropout multipliers: 1/(1-p) where kept, 0 where dropped; shape of `counter`.

    `counter` is int64 arange over the mask's elements (in the mask's shape).
    """
    x = (counter + key) & MASK32
    h = hash_kernel(x) if hash_kernel else hash32(x)
    threshold = int(p * 2**32)
    return xp.astype(h >= threshold, dtype) * (1.0 / (1.0 - p))
