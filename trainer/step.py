"""One training step, built once per run and called for every batch.

The math is network.py's and losses.py's, rearranged for speed: `xp` is bound once, the
learning rate is folded into the output gradient so every weight gradient comes out already
scaled, the softmax and the cross-entropy share their intermediates, and parameters are updated
in place. A backend may offer kernels (see backends/__init__.py) that write into reused
buffers; without them this is plain array-API code, and the tests check that both agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trainer.activations import ACTIVATIONS
from trainer.config import Config

Array = Any


class TrainStep:
    """SGD with momentum (v = m v - lr g; w += v), Nesterov and L1/L2 as configured.

    Three ways to keep the state, fastest first, by what the backend offers:
    - "velocity": weights, velocities and gradients are views of flat buffers, and each
      weight GEMM updates its velocity itself (v = m v + a^T delta); one pass adds v to w;
    - "flat": the GEMMs write gradients into a flat buffer, one update covers every layer;
    - "plain": array-API operations only, one update per array.
    """

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], kernels: Mapping[str, Callable] | None = None):
        self.config, self.xp = config, xp
        self.params, self.velocities = list(params), list(velocities)
        self.acts, self.fused_ce = config.activations, config.loss == "cross_entropy"
        self.regularized = config.regularization_type is not None and config.regularization_rate
        k = kernels or {}
        self._matmul, self._take, self._sum0 = k.get("matmul"), k.get("take"), k.get("sum0")
        self._activate, self._softmax_xent = k.get("activate"), k.get("softmax_xent")
        self._gemm_acc = k.get("gemm_acc") if not config.nesterov else None
        self._buffers: dict[int, tuple[Array, list[Array]]] = {}
        self.mode = "plain"
        if self._matmul and self._sum0:
            w, self.params = _flatten(xp, self.params)
            v, self.velocities = _flatten(xp, self.velocities)
            g, self._grads = _flatten(xp, self.params)
            self._flat = (w, v, g)
            self.mode = "velocity" if self._gemm_acc else "flat"

    def __call__(self, x_all: Array, t_all: Array, idx: Array, lr: float) -> tuple[Array, Array]:
        """Train on rows `idx` of x_all (inputs) and t_all (one-hot targets).

        Returns (summed loss, number of rows whose true class has the largest output), both as
        device scalars: nothing is read back to the host here.
        """
        xp, n = self.xp, idx.shape[0]
        if self.mode == "plain":
            x, bufs = xp.take(x_all, idx, axis=0), None
        else:
            x_buf, bufs = self._batch_buffers(n, x_all)
            x = self._take(x_all, idx, x_buf) if self._take else xp.take(x_all, idx, axis=0)
        t = xp.take(t_all, idx, axis=0)
        outs = self._forward(x, bufs)
        scale = -lr / n if self.config.loss_reduction == "mean" else -lr
        loss, correct, delta = self._loss(outs, t, scale)
        self._backward(outs, delta, lr)
        return loss, correct

    def _forward(self, x: Array, bufs: list[Array] | None) -> list[Array]:
        """[x, a1, ..., aL]; with fused cross-entropy aL is the logits (softmax comes later)."""
        outs, last = [x], len(self.acts) - 1
        for i, act in enumerate(self.acts):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            z = self._matmul(outs[-1], w, bufs[i]) if bufs else outs[-1] @ w
            z += b
            if i == last and self.fused_ce:
                outs.append(z)
            else:
                a = self._activate(act, z) if bufs and self._activate else None
                outs.append(a if a is not None else ACTIVATIONS[act][0](z))
        return outs

    def _loss(self, outs: list[Array], t: Array, scale: float) -> tuple[Array, Array, Array]:
        """(summed loss, correct count, delta = scale * d loss / d last pre-activation)."""
        xp, out = self.xp, outs[-1]
        if self.fused_ce and self._softmax_xent and self.mode != "plain":
            return self._softmax_xent(out, t, scale)
        shifted = out - xp.max(out, axis=1, keepdims=True)  # 0 where a row has its largest
        # a row is right when its true class has the largest output (ties: measure zero)
        correct = xp.sum(xp.where(shifted == 0.0, t, 0.0))
        if self.fused_ce:  # softmax and cross-entropy from one set of intermediates
            e = xp.exp(shifted)
            s = xp.sum(e, axis=1, keepdims=True)
            loss = xp.sum(t * (xp.log(s) - shifted))  # -log p(true class), rows of t sum to 1
            return loss, correct, (e / s - t) * scale
        diff = out - t
        loss = 0.5 * xp.sum(diff * diff)
        return loss, correct, ACTIVATIONS[self.acts[-1]][1](out, diff) * scale

    def _backward(self, outs: list[Array], delta: Array, lr: float) -> None:
        for i in range(len(self.acts) - 1, -1, -1):
            a_in = outs[i]
            down = delta @ self.params[2 * i].T if i > 0 else None  # w before its update
            self._gradient(i, a_in, delta, lr)
            if i > 0:
                delta = ACTIVATIONS[self.acts[i - 1]][1](a_in, down)
        if self.mode == "velocity":
            w, v, _ = self._flat
            w += v
        elif self.mode == "flat":
            self._update(*self._flat)

    def _gradient(self, i: int, a_in: Array, delta: Array, lr: float) -> None:
        """Layer i's scaled gradient into its velocity, the flat buffer, or straight to w."""
        w = self.params[2 * i]
        if self.mode == "velocity":  # v = m v + a^T delta in the GEMM; biases are too small
            m, v_b = self.config.momentum, self.velocities[2 * i + 1]
            self._gemm_acc(a_in.T, delta, self.velocities[2 * i], 1.0, m)
            v_b *= m
            v_b += self._sum0(delta, self._grads[2 * i + 1])
            grad_w = self.velocities[2 * i]
        elif self.mode == "flat":
            grad_w = self._matmul(a_in.T, delta, self._grads[2 * i])
            self._sum0(delta, self._grads[2 * i + 1])
        else:
            grad_w = a_in.T @ delta
        if self.regularized:  # lands in v directly in "velocity" mode: the same v = m v + step
            kind, rate = self.config.regularization_type, self.config.regularization_rate
            grad_w += (-lr * rate) * (w if kind == "L2" else self.xp.sign(w))
        if self.mode == "plain":
            self._update(w, self.velocities[2 * i], grad_w)
            self._update(self.params[2 * i + 1], self.velocities[2 * i + 1],
                         self.xp.sum(delta, axis=0))

    def _update(self, w: Array, v: Array, step: Array) -> None:
        """v = m v + step; w += v (or the Nesterov look-ahead), with step = -lr * gradient."""
        m = self.config.momentum
        v *= m
        v += step
        if self.config.nesterov:
            w += m * v + step
        else:
            w += v

    def _batch_buffers(self, n: int, like: Array) -> tuple[Array, list[Array]]:
        """Input and per-layer output buffers for batches of `n` rows (two sizes at most)."""
        if n not in self._buffers:
            xp, sizes = self.xp, self.config.sizes
            self._buffers[n] = (
                xp.empty((n, sizes[0]), dtype=like.dtype, device=like.device),
                [xp.empty((n, k), dtype=like.dtype, device=like.device) for k in sizes[1:]])
        return self._buffers[n]


def _flatten(xp: Any, arrays: Sequence[Array]) -> tuple[Array, list[Array]]:
    """One flat buffer holding copies of `arrays`, and views of it shaped like them."""
    first = arrays[0]
    flat = xp.empty((sum(_size(a) for a in arrays),), dtype=first.dtype, device=first.device)
    views, lo = [], 0
    for a in arrays:
        view = xp.reshape(flat[lo:lo + _size(a)], a.shape)
        view[...] = a
        views.append(view)
        lo += _size(a)
    return flat, views


def _size(a: Array) -> int:
    return int(math.prod(a.shape))
