"""A whole training step compiled by numba, for NumPy arrays: the `numba` backend's kernel.

NumPy pays Python's dispatch for each of a step's ~40 array operations; at neural-net-rs's
batch of 32 that is as much time as the GEMMs themselves. Here the steps of a stretch run as
one compiled loop: the GEMMs through the OpenBLAS that NumPy ships (its 64-bit CBLAS entry
points, as numpy_blas.py), everything else as loops that the compiler vectorizes. Those loops
need exp and tanh as plain arithmetic (numba's math functions are scalar library calls, about
ten times slower): Cephes' polynomials, in numba_math.py.

What the kernel computes is trainer/core's step for a multilayer perceptron with sigmoid, tanh,
ReLU, leaky ReLU or identity hidden layers, dropout (dropout.py's counter-based masks, bit for
bit), a softmax output with summed or mean cross-entropy, an L1 or L2 penalty, and momentum
SGD (plain or Nesterov's), Adam or AdamW: the same math as network.forward/backward,
losses.loss_and_delta and optim.py, tested against an independent float64 reference
(tests/test_numba_step.py). Augmented batches (shifts, elastic warps) are made outside, as
for every step, and handed in one step at a time. exp of a value below EXP_FLOOR32 or
EXP_FLOOR64 (numba_math.py) is taken as zero, so that no denormal number reaches a GEMM, where
they are many times slower than normal numbers (BENCHMARKS.md: a prototype without it took 2-8 s per
epoch at batch 512).

This module imports numba, which the `numba` extra installs.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from . import HASH32_MULTIPLIER, numpy_blas
from .fused_args import (
    IDENTITY,
    L1,
    L2,
    LEAKY_RELU,
    MOMENTUM,
    NESTEROV,
    RELU,
    SIGMOID,
    TANH,
    FusedArgs,
)
from .numba_math import vexp, vtanh

ROW_MAJOR, NO_TRANS, TRANS = numpy_blas.ROW_MAJOR, numpy_blas.NO_TRANS, numpy_blas.TRANS
MASK32, MIX = 0xFFFFFFFF, HASH32_MULTIPLIER  # dropout.hash32's


@njit(inline="always", error_model="numpy")
def _bias_activate(z: np.ndarray, b: np.ndarray, act: int, slope: float) -> None:
    """z = activation(z + b) in place, row by row (network.forward's layer)."""
    n, h = z.shape
    half = z.dtype.type(0.5)
    zero = z.dtype.type(0.0)
    leak = z.dtype.type(slope)
    for r in range(n):
        row = z[r]
        for j in range(h):
            row[j] += b[j]
        if act == SIGMOID:  # as activations.sigmoid: 0.5 (tanh(z / 2) + 1)
            for j in range(h):
                row[j] = half * vtanh(half * row[j]) + half
        elif act == TANH:
            for j in range(h):
                row[j] = vtanh(row[j])
        elif act == RELU:
            for j in range(h):
                row[j] = max(row[j], zero)
        elif act == LEAKY_RELU:
            for j in range(h):
                row[j] = row[j] if row[j] > zero else leak * row[j]


@njit(inline="always", error_model="numpy")
def _activate_grad(g: np.ndarray, a: np.ndarray, act: int, slope: float) -> None:
    """g times the activation's derivative, from its output a (activations.*_backward)."""
    n, h = g.shape
    one = g.dtype.type(1.0)
    zero = g.dtype.type(0.0)
    leak = g.dtype.type(slope)
    for r in range(n):
        gr, ar = g[r], a[r]
        if act == SIGMOID:
            for j in range(h):
                gr[j] *= ar[j] * (one - ar[j])
        elif act == TANH:
            for j in range(h):
                gr[j] *= one - ar[j] * ar[j]
        elif act == RELU:
            for j in range(h):
                gr[j] = gr[j] if ar[j] > zero else zero
        elif act == LEAKY_RELU:
            for j in range(h):
                gr[j] = gr[j] if ar[j] > zero else leak * gr[j]


@njit(inline="always", error_model="numpy")
def _drop(a: np.ndarray, out: np.ndarray, mask: np.ndarray, key: int, threshold: int,
          keep: float) -> None:
    """out = a times dropout's multipliers, and the multipliers in mask: dropout.keep_mask of
    the counter r * width + j (its position in the batch) and the step's key, hashed as
    dropout.hash32 in int64 (its products stay below 2**63)."""
    n, h = a.shape
    kept = a.dtype.type(keep)
    zero = a.dtype.type(0.0)
    for r in range(n):
        ar, orow, mrow = a[r], out[r], mask[r]
        base = r * h + key
        for j in range(h):
            x = (base + j) & MASK32
            x ^= x >> 16
            x = (x * MIX) & MASK32
            x ^= x >> 16
            x = (x * MIX) & MASK32
            x ^= x >> 16
            m = kept if x >= threshold else zero
            mrow[j] = m
            orow[j] = ar[j] * m


@njit(inline="always", error_model="numpy")
def _times(g: np.ndarray, mask: np.ndarray) -> None:
    for r in range(g.shape[0]):
        gr, mr = g[r], mask[r]
        for j in range(g.shape[1]):
            gr[j] *= mr[j]


@njit(inline="always", error_model="numpy")
def _softmax_xent(z: np.ndarray, labels: np.ndarray, scale: float) -> tuple[float, int]:
    """losses.loss_and_delta's cross-entropy on logits z (n, k), and metrics.hits: returns the
    summed loss (float64) and the correct count, and leaves scale * (softmax - onehot) in z."""
    n, k = z.shape
    loss = 0.0
    correct = 0
    for r in range(n):  # shift each row by its largest logit
        row = z[r]
        mx = row[0]
        for j in range(1, k):
            mx = max(mx, row[j])
        for j in range(k):
            row[j] -= mx
        shifted = row[labels[r]]
        loss -= np.float64(shifted)
        correct += shifted == 0  # the true class has the largest output, as metrics.hits
    flat = z.reshape(n * k)
    for i in range(n * k):  # (one long loop: it vectorizes, rows of ten do not)
        flat[i] = vexp(flat[i])
    for r in range(n):
        row = z[r]
        s = row[0]
        for j in range(1, k):
            s += row[j]
        loss += np.log(np.float64(s))
        factor = scale / s
        for j in range(k):
            row[j] *= factor
        row[labels[r]] -= scale
    return loss, correct


@njit(inline="always", error_model="numpy")
def _gather(x_all: np.ndarray, labels_all: np.ndarray, rows: np.ndarray, x: np.ndarray,
            labels: np.ndarray) -> None:
    """The batch's rows of x_all into x, and their labels."""
    d = x.shape[1]
    for r in range(rows.shape[0]):
        src, dst = x_all[rows[r]], x[r]
        for c in range(d):
            dst[c] = src[c]
        labels[r] = labels_all[rows[r]]


@njit(inline="always", error_model="numpy")
def _bias_momentum(vb: np.ndarray, delta: np.ndarray, m: float) -> None:
    """vb = m vb + delta summed over the batch: optim.momentum for a bias."""
    for j in range(vb.shape[0]):
        vb[j] *= m
    for r in range(delta.shape[0]):
        dr = delta[r]
        for j in range(vb.shape[0]):
            vb[j] += dr[j]


@njit(inline="always", error_model="numpy")
def _bias_sum(gb: np.ndarray, delta: np.ndarray) -> None:
    """gb = delta summed over the batch: a bias's gradient."""
    for j in range(gb.shape[0]):
        gb[j] = 0.0
    for r in range(delta.shape[0]):
        dr = delta[r]
        for j in range(gb.shape[0]):
            gb[j] += dr[j]


@njit(inline="always", error_model="numpy")
def _penalize(g: np.ndarray, w: np.ndarray, pen: float, kind: int) -> None:
    """g += pen * d(penalty)/dw (optim.add_penalty): L2's w, L1's sign(w)."""
    one, zero = w.dtype.type(1.0), w.dtype.type(0.0)
    if kind == L2:
        for j in range(g.shape[0]):
            g[j] += pen * w[j]
    elif kind == L1:
        for j in range(g.shape[0]):
            sign = one if w[j] > zero else (-one if w[j] < zero else zero)
            g[j] += pen * sign


@njit(inline="always", error_model="numpy")
def _add(w: np.ndarray, v: np.ndarray) -> None:
    for j in range(w.shape[0]):
        w[j] += v[j]


@njit(inline="always", error_model="numpy")
def _nesterov(w: np.ndarray, v: np.ndarray, g: np.ndarray, m: float) -> None:
    """optim.sgd with nesterov: v = m v + g; w += m v + g."""
    for j in range(w.shape[0]):
        vj = v[j] * m + g[j]
        v[j] = vj
        w[j] += m * vj + g[j]


@njit(inline="always", error_model="numpy")
def _adam(w: np.ndarray, f: np.ndarray, s: np.ndarray, g: np.ndarray, b1: float, b2: float,
          eps: float, step: float, bias2: float, decay: float, decays: bool) -> None:
    """optim.adam, in its order of operations (its Python floats in the weights' dtype)."""
    c1, c2 = w.dtype.type(1.0 - b1), w.dtype.type(1.0 - b2)
    d1, d2, e = w.dtype.type(b1), w.dtype.type(b2), w.dtype.type(eps)
    for j in range(w.shape[0]):
        gj = g[j]
        fj = f[j] * d1 + c1 * gj
        sj = s[j] * d2 + c2 * (gj * gj)
        f[j] = fj
        s[j] = sj
        wj = w[j] * decay if decays else w[j]
        w[j] = wj - step * (fj / (np.sqrt(sj / bias2) + e))


@njit(inline="always", error_model="numpy")
def _update(args: FusedArgs, s: int) -> None:
    """The step's update of every weight and bias, once the gradients are in (optim.py): the
    penalty on the weights, then the rule."""
    w, v, g, off = args.w, args.v, args.g, args.offsets
    m = w.dtype.type(args.momentum)
    pen = args.penalties[s]
    plain = args.update == MOMENTUM
    if args.penalty != 0:  # plain momentum: v already holds m v + gradient, so into v
        for i in range(args.acts.shape[0]):
            lo, hi = off[2 * i], off[2 * i + 1]
            _penalize(v[lo:hi] if plain else g[lo:hi], w[lo:hi], pen, args.penalty)
    if plain:
        _add(w, v)  # optim.sgd's w += v
    elif args.update == NESTEROV:
        _nesterov(w, v, g, m)
    else:
        _adam(w, v, args.s2, g, args.beta1, args.beta2, args.epsilon, args.adam_steps[s],
              args.adam_bias2[s], args.adam_decay[s], args.decay)


def gemm_function(dtype: np.dtype) -> Any | None:
    """NumPy's own BLAS's cblas_sgemm (float32) or cblas_dgemm (float64) with its pointers as
    int64 (what numba passes for `a.ctypes.data`), or None where that BLAS has none."""
    lib = numpy_blas._library()
    f = numpy_blas.symbol(lib, ("s" if dtype == np.float32 else "d") + "gemm") if lib else None
    if f is None:
        return None
    real, i64 = (ctypes.c_float if dtype == np.float32 else ctypes.c_double), ctypes.c_int64
    return ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, real,
                            i64, i64, i64, i64, real, i64, i64)(
        ctypes.cast(f, ctypes.c_void_p).value)


def make_kernel(dtype: np.dtype) -> Callable[..., Any] | None:
    """The stretch kernel for `dtype` (float32 or float64) calling NumPy's own BLAS, or None
    where NumPy's BLAS does not offer the GEMM it needs."""
    gemm = gemm_function(dtype)
    return None if gemm is None else _build(gemm)


def _build(gemm: Any) -> Callable[..., Any]:
    @njit(boundscheck=False, nogil=True, error_model="numpy")
    def steps(args: FusedArgs, first: int, count: int, batch: int, gathered: bool
              ) -> tuple[int, float]:
        """Steps first .. first + count - 1 of an epoch, each on `batch` rows (FusedArgs says
        what each of `args` is; `gathered`: step `first`'s batch is already in place): forward
        with dropout, softmax cross-entropy, backward, the penalty and the update rule, each
        step's summed loss and correct count added to args.sums. Stops after a step whose mean
        loss is not finite or above args.bound (losses.diverged's rule). Returns (that step
        or -1, the last step's summed loss)."""
        sizes, acts, offsets, w = args.sizes, args.acts, args.offsets, args.w
        keeps, slope = args.keeps, args.slope
        layers = acts.shape[0]
        d = sizes[0]
        plain = args.update == MOMENTUM
        m = w.dtype.type(args.momentum)
        one = w.dtype.type(1.0)
        zero = w.dtype.type(0.0)
        grads = args.v if plain else args.g  # plain momentum: v = m v + gradient in the GEMM
        beta = m if plain else zero
        n = batch
        width = args.dbuf.shape[0] // 2
        last = 0.0
        for s in range(first, first + count):
            x = args.xbuf[:n * d].reshape((n, d))
            if not (gathered and s == first):
                lo = s * args.batch_size
                _gather(args.x_all, args.labels_all, args.perm[lo:lo + n], x, args.labels)
            # forward: each layer's output in hbuf, one after the other; each connection's
            # input after dropout (and its multipliers) in ibuf (and mbuf)
            a_in = x
            h0 = i0 = 0
            for i in range(layers):
                fi, fo = sizes[i], sizes[i + 1]
                if keeps[i] != 0.0:
                    dropped = args.ibuf[i0:i0 + n * fi].reshape((n, fi))
                    _drop(a_in, dropped, args.mbuf[i0:i0 + n * fi].reshape((n, fi)),
                          args.keys[s, i], args.thresholds[i], keeps[i])
                    a_in = dropped
                i0 += n * fi
                z = args.hbuf[h0:h0 + n * fo].reshape((n, fo))
                wi = w[offsets[2 * i]:offsets[2 * i] + fi * fo]
                gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, n, fo, fi, one, a_in.ctypes.data, fi,
                     wi.ctypes.data, fo, zero, z.ctypes.data, fo)
                _bias_activate(z, w[offsets[2 * i + 1]:offsets[2 * i + 1] + fo],
                               acts[i] if i < layers - 1 else IDENTITY, slope)
                a_in = z
                h0 += n * fo
            loss, correct = _softmax_xent(a_in, args.labels[:n], args.scales[s])
            last = loss
            args.sums[0] += loss
            args.sums[1] += correct
            # backward: delta in place of the logits, then in dbuf's two halves in turn
            delta = a_in
            for i in range(layers - 1, -1, -1):
                fi, fo = sizes[i], sizes[i + 1]
                h0 -= n * fo
                i0 -= n * fi
                raw = args.hbuf[h0 - n * fi:h0].reshape((n, fi)) if i > 0 else x
                prev = (args.ibuf[i0:i0 + n * fi].reshape((n, fi)) if keeps[i] != 0.0
                        else raw)
                wi = w[offsets[2 * i]:offsets[2 * i] + fi * fo]
                gi = grads[offsets[2 * i]:offsets[2 * i] + fi * fo]
                if i > 0:  # delta @ w^T, with w before its update
                    down = args.dbuf[(i % 2) * width:(i % 2) * width + n * fi].reshape((n, fi))
                    gemm(ROW_MAJOR, NO_TRANS, TRANS, n, fi, fo, one, delta.ctypes.data, fo,
                         wi.ctypes.data, fo, zero, down.ctypes.data, fi)
                # the weights' gradient a^T delta (-lr in delta for SGD): into v = m v + it
                # (optim.momentum), or into the gradient buffer
                gemm(ROW_MAJOR, TRANS, NO_TRANS, fi, fo, n, one, prev.ctypes.data, fi,
                     delta.ctypes.data, fo, beta, gi.ctypes.data, fo)
                bias = offsets[2 * i + 1]
                if plain:
                    _bias_momentum(args.v[bias:bias + fo], delta, m)
                else:
                    _bias_sum(args.g[bias:bias + fo], delta)
                if i > 0:
                    if keeps[i] != 0.0:
                        _times(down, args.mbuf[i0:i0 + n * fi].reshape((n, fi)))
                    _activate_grad(down, raw, acts[i - 1], slope)
                    delta = down
            _update(args, s)
            mean = loss / n
            if not np.isfinite(mean) or mean > args.bound:
                return s, last
        return -1, last

    return steps
