"""exp and tanh as plain arithmetic for numba's compiled loops (backends/numba_step.py): numba's
math functions are scalar library calls, about ten times slower, and do not vectorize. These
are Cephes' polynomials, accurate to a few units in the last place (tests/test_numba_step.py),
typed by numba's `overload` for float32 and float64.

This module imports numba, which the `numba` extra installs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

# exp(x) for x below these is taken as 0 (float32: e^-60 ~ 1e-26; float64: e^-600 ~ 1e-261,
# both far from the denormals, 1e-38 and 1e-308, even after a learning rate multiplies them)
EXP_FLOOR32, EXP_FLOOR64 = -60.0, -600.0


@intrinsic
def _f32_from_bits(typingctx: Any, i: Any) -> Any:
    if not isinstance(i, types.Integer):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        v = args[0]
        if i.bitwidth != 32:
            v = builder.trunc(v, context.get_value_type(types.int32))
        return builder.bitcast(v, context.get_value_type(types.float32))
    return types.float32(i), codegen


@intrinsic
def _f64_from_bits(typingctx: Any, i: Any) -> Any:
    if not isinstance(i, types.Integer) or i.bitwidth != 64:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(i), codegen


def vexp(x: float) -> float:
    """exp(x), vectorizable (typed by `overload` below)."""
    raise NotImplementedError  # pragma: no cover - only numba calls it


def vtanh(x: float) -> float:
    """tanh(x), vectorizable (typed by `overload` below)."""
    raise NotImplementedError  # pragma: no cover - only numba calls it


@njit(inline="always", error_model="numpy")
def _exp32(x: float) -> float:
    # Cephes expf: exp(x) = 2^k exp(r), r = x - k ln 2 in [-ln 2 / 2, ln 2 / 2]
    small = x < np.float32(EXP_FLOOR32)
    x = min(x, np.float32(88.0))
    x = x if not small else np.float32(0.0)
    k = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    e = p * _f32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))
    return e if not small else np.float32(0.0)


@njit(inline="always", error_model="numpy")
def _exp64(x: float) -> float:
    # Cephes exp: a Pade form in r = x - k ln 2
    small = x < EXP_FLOOR64
    x = min(x, 709.0)
    x = x if not small else 0.0
    k = np.floor(x * 1.4426950408889634073599 + 0.5)
    r = x - k * 6.93145751953125e-1 - k * 1.42860682030941723212e-6
    rr = r * r
    px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
              + 9.99999999999999999910e-1)
    q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
         + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0
    e = (1.0 + 2.0 * (px / (q - px))) * _f64_from_bits((np.int64(k) + np.int64(1023))
                                                       << np.int64(52))
    return e if not small else 0.0


@njit(inline="always", error_model="numpy")
def _tanh32(x: float) -> float:
    # Cephes tanhf: an odd polynomial below 0.625, 1 - 2 / (exp(2|x|) + 1) above
    ax = abs(x)
    z = x * x
    p = ((((np.float32(-5.70498872745e-3) * z + np.float32(2.06390887954e-2)) * z
           - np.float32(5.37397155531e-2)) * z + np.float32(1.33314422036e-1)) * z
         - np.float32(3.33332819422e-1)) * z * x + x
    e = _exp32(min(np.float32(2.0) * ax, np.float32(88.0)))
    big = np.float32(1.0) - np.float32(2.0) / (e + np.float32(1.0))
    big = big if x >= np.float32(0.0) else -big
    return p if ax < np.float32(0.625) else big


@njit(inline="always", error_model="numpy")
def _tanh64(x: float) -> float:
    # Cephes tanh: x + x^3 P(x^2) / Q(x^2) below 0.625, 1 - 2 / (exp(2|x|) + 1) above
    ax = abs(x)
    z = x * x
    p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z \
        - 1.61468768441708447952e3
    q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z \
        + 4.84406305325125486048e3
    small = x + x * z * (p / q)
    e = _exp64(min(2.0 * ax, 709.0))
    big = 1.0 - 2.0 / (e + 1.0)
    big = big if x >= 0.0 else -big
    return small if ax < 0.625 else big


@overload(vexp)
def _vexp(x):  # noqa: ANN001, ANN202 - numba compares these signatures
    if isinstance(x, types.Float):
        return (lambda x: _exp32(x)) if x.bitwidth == 32 else (lambda x: _exp64(x))
    return None


@overload(vtanh)
def _vtanh(x):  # noqa: ANN001, ANN202 - numba compares these signatures
    if isinstance(x, types.Float):
        return (lambda x: _tanh32(x)) if x.bitwidth == 32 else (lambda x: _tanh64(x))
    return None
