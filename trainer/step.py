"""One training step, built once per run and called for every batch.

The math is network.py's and losses.py's, rearranged for speed: `xp` is bound once, the
learning rate is folded into the output gradient (SGD) so every weight gradient comes out
already scaled, the softmax and the cross-entropy share their intermediates, and parameters are
updated in place. A backend may offer kernels (see backends/__init__.py) that write into reused
buffers; without them this is plain array-API code, and the tests check that both agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.activations import ACTIVATIONS
from trainer.config import Config
from trainer.dropout import keep_mask, step_key

Array = Any
# weights from this many elements up get their velocity updated inside the gradient's GEMM;
# below it two passes over v cost less than the extra overhead of the BLAS call (measured)
GEMM_ACC_MIN = 32768


class TrainStep:
    """SGD with momentum (v = m v - lr g; w += v) or Nesterov, or Adam/AdamW; L1/L2; dropout.

    Three ways to keep the state, fastest first, by what the backend offers:
    - "velocity" (SGD): weights, velocities and gradients are views of flat buffers; each large
      weight GEMM updates its velocity itself (v = m v + a^T delta), one pass updates the rest's
      velocities (small weights and biases, laid out after the large weights), one adds v to w;
    - "flat": the GEMMs write gradients into a flat buffer, one update covers every layer;
    - "plain": array-API operations only, one update per array.
    """

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], kernels: Mapping[str, Callable] | None = None):
        self.config, self.xp = config, xp
        self.params, self.velocities = list(params), list(velocities)
        self.acts, self.fused_ce = config.activations, config.loss == "cross_entropy"
        self.adam = config.optimizer in ("adam", "adamw")
        self.regularized = config.regularization_type is not None and config.regularization_rate
        self.dropouts = config.dropouts
        self.dropping = any(self.dropouts)
        self.global_step = 0  # steps taken: the dropout masks' counter and Adam's t
        self.augment: Callable[[Array, Array], Array] | None = None  # set by the training loop
        k = kernels or {}
        self._matmul, self._take, self._sum0 = k.get("matmul"), k.get("take"), k.get("sum0")
        self._activate, self._activate_grad = k.get("activate"), k.get("activate_grad")
        self._softmax_xent_t = k.get("softmax_xent_t")
        self._hash, self._axpy = k.get("hash32"), k.get("axpy")
        self._gemm_acc = k.get("gemm_acc") if not (config.nesterov or self.adam) else None
        self._buffers: dict[int, _BatchBuffers] = {}
        first = self.params[0]  # row c of the identity: class c's one-hot target
        self._onehot = xp.eye(config.sizes[-1], dtype=first.dtype, device=first.device)
        self._counters: dict[tuple[int, int], Array] = {}
        self.mode = "plain"
        self._acc_in_gemm = [bool(self._gemm_acc) and _size(w) >= GEMM_ACC_MIN
                             for w in self.params[::2]]
        if self._matmul and self._sum0:
            # the weights whose GEMM updates their velocity first, then everything else: one
            # pass covers the rest's momentum (v = m v + g) in "velocity" mode
            big = [2 * i for i, acc in enumerate(self._acc_in_gemm) if acc]
            order = big + [j for j in range(len(self.params)) if j not in big]
            w, self.params = _flatten(xp, self.params, order)
            v, self.velocities = _flatten(xp, self.velocities, order)
            g, self._grads = _flatten(xp, self.params, order)
            self._flat = (w, v, g)
            rest = sum(_size(self.params[j]) for j in big)
            self._rest = (v[rest:], g[rest:])
            # w += v on the BLAS's threads (they matter once w and v are out of the cache)
            self._add_velocity = self._axpy(v, w) if self._axpy else None
            self.mode = "velocity" if self._gemm_acc else "flat"
        # the fused cross-entropy's logits kept transposed (classes x samples): see the kernel
        self.transposed = bool(self.fused_ce and self._softmax_xent_t and self.mode != "plain")
        self._bias_columns = [xp.reshape(b, (-1, 1)) for b in self.params[1::2]]
        # Adam's second moments, laid out like the velocities (its first moments)
        self.second = ([xp.zeros_like(v) for v in self.velocities] if self.adam else [])
        if self.adam and self.mode == "flat":
            self._second_flat, self.second = _flatten(xp, self.second, range(len(self.second)))

    def __call__(self, x_all: Array, y_all: Array, idx: Array, lr: float,
                 x: Array | None = None) -> tuple[Array, Array]:
        """Train on rows `idx` of x_all (inputs) and y_all (integer labels) at rate `lr`.

        `x`, when given, is x_all's rows `idx` already gathered (by a prefetching thread); the
        step only reads it. Returns (summed loss, number of rows whose true class has the
        largest output), both as device scalars: nothing is read back to the host here.
        """
        xp, n = self.xp, idx.shape[0]
        b = None
        if self.mode != "plain":
            b = self._buffers.get(n) or self._batch_buffers(n, x_all)
        if x is None:
            x = (self._take(x_all, idx, b.x) if b and self._take
                 else xp.take(x_all, idx, axis=0))
        if self.augment is not None:
            x = self.augment(x, idx)
        y = xp.take(y_all, idx)
        # the fused kernel reads the labels; everything else the one-hot rows
        t = y if self.transposed else xp.take(self._onehot, y, axis=0)
        outs, pre, masks = self._forward(x, b.outs if b else None)
        scale = 1.0 if self.adam else -lr  # SGD: fold -lr into every gradient
        if self.config.loss_reduction == "mean":
            scale /= n
        loss, correct, delta = self._loss(outs, t, scale)
        self._backward(outs, pre, masks, delta, lr, scale)
        self.global_step += 1
        return loss, correct

    def _forward(self, x: Array, bufs: list[Array] | None
                 ) -> tuple[list[Array], list[Array], list[Array | None]]:
        """Layer outputs after dropout ([x, a1, ..., aL]), before dropout, and the masks.

        With fused cross-entropy aL is the logits (the softmax comes in `_loss`).
        """
        last = len(self.acts) - 1
        masks: list[Array | None] = [self._mask(0, x) if self.dropping else None]
        pre, outs = [x], [x if masks[0] is None else x * masks[0]]
        for i, act in enumerate(self.acts):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            if i == last and self.transposed:  # (classes, samples) = w^T a^T
                z = self._matmul(w.T, outs[-1].T, bufs[i])
                z += self._bias_columns[i]
            else:
                z = self._matmul(outs[-1], w, bufs[i]) if bufs else outs[-1] @ w
                z += b
            if i == last and self.fused_ce:
                a = z
            else:
                a = self._activate(act, z) if bufs and self._activate else None
                a = a if a is not None else ACTIVATIONS[act][0](z)
            masks.append(self._mask(i + 1, a) if self.dropping and i < last else None)
            pre.append(a)
            outs.append(a if masks[-1] is None else a * masks[-1])
        return outs, pre, masks

    def _mask(self, layer: int, a: Array) -> Array | None:
        p = self.dropouts[layer]
        if not p:
            return None
        shape = (a.shape[0], a.shape[1])
        if shape not in self._counters:
            self._counters[shape] = self.xp.reshape(
                self.xp.arange(shape[0] * shape[1], dtype=self.xp.int64, device=a.device), shape)
        key = step_key(self.config.seed, self.global_step, layer)
        return keep_mask(self.xp, self._counters[shape], key, p, a.dtype, self._hash)

    def _loss(self, outs: list[Array], t: Array, scale: float) -> tuple[Array, Array, Array]:
        """(summed loss, correct count, delta = scale * d loss / d last pre-activation).

        t: the one-hot targets; with `self.transposed`, the labels, and the logits hold one
        column per sample.
        """
        xp, out = self.xp, outs[-1]
        if self.transposed:
            loss, correct, delta_t = self._softmax_xent_t(out, t, scale)
            return loss, correct, delta_t.T
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

    def _backward(self, outs: list[Array], pre: list[Array], masks: list[Array | None],
                  delta: Array, lr: float, scale: float) -> None:
        b = self._buffers[delta.shape[0]] if self.mode != "plain" else None
        for i in range(len(self.acts) - 1, -1, -1):
            down = None
            if i > 0:  # w before its update
                w_t = self.params[2 * i].T
                down = self._matmul(delta, w_t, b.downs[i - 1]) if b else delta @ w_t
            self._gradient(i, outs[i], delta, lr, scale)
            if i > 0:
                if masks[i] is not None:
                    down *= masks[i]  # a fresh product or the step's own buffer
                act, a = self.acts[i - 1], pre[i]
                grad = (self._activate_grad(act, a, down, b.scratch[i - 1])
                        if b and self._activate_grad else None)
                delta = grad if grad is not None else ACTIVATIONS[act][1](a, down)
        if self.mode == "velocity":  # the rest's v = m v + g, then every w += v
            v_rest, g_rest = self._rest
            v_rest *= self.config.momentum
            v_rest += g_rest
            if self._add_velocity:
                self._add_velocity(1.0)
            else:
                w, v, _ = self._flat
                w += v
        elif self.mode == "flat":
            w, v, g = self._flat
            self._apply(w, v, g, lr, self._second_flat if self.adam else None)

    def _gradient(self, i: int, a_in: Array, delta: Array, lr: float, scale: float) -> None:
        """Layer i's scaled gradient into its velocity, the flat buffer, or straight to w."""
        w = self.params[2 * i]
        if self.mode == "plain":
            grad_w = a_in.T @ delta
        else:
            if self._acc_in_gemm[i]:  # "velocity": v = m v + a^T delta in the GEMM
                grad_w = self.velocities[2 * i]
                self._gemm_acc(a_in.T, delta, grad_w, 1.0, self.config.momentum)
            else:  # into the flat gradient buffer (for a small GEMM NumPy's call is cheaper)
                grad_w = self._matmul(a_in.T, delta, self._grads[2 * i])
            self._sum0(delta, self._grads[2 * i + 1])
        if self.regularized:  # lands in v directly after the velocity GEMM: the same v = m v + step
            kind, rate = self.config.regularization_type, self.config.regularization_rate
            grad_w += (scale * rate) * (w if kind == "L2" else self.xp.sign(w))
        if self.mode == "plain":
            for j, g in ((2 * i, grad_w), (2 * i + 1, self.xp.sum(delta, axis=0))):
                self._apply(self.params[j], self.velocities[j], g, lr,
                            self.second[j] if self.adam else None)

    def _apply(self, w: Array, v: Array, g: Array, lr: float, second: Array | None) -> None:
        """The optimizer's update of w (SGD: g is already -lr * gradient; Adam: the gradient)."""
        c = self.config
        if second is None:  # SGD: v = m v + g; w += v, or Nesterov's look-ahead
            v *= c.momentum
            v += g
            if c.nesterov:
                w += c.momentum * v + g
            else:
                w += v
            return
        t = self.global_step + 1  # Adam, with bias correction; v is the first moment
        v *= c.beta1
        v += (1 - c.beta1) * g
        second *= c.beta2
        second += (1 - c.beta2) * (g * g)
        if c.optimizer == "adamw" and c.weight_decay:
            w *= 1 - lr * c.weight_decay  # decoupled weight decay
        denom = self.xp.sqrt(second / (1 - c.beta2 ** t)) + c.epsilon
        w -= (lr / (1 - c.beta1 ** t)) * (v / denom)

    def export(self, to_numpy: Callable[[Array], Any]) -> tuple[list, list, list]:
        """Host copies of (weights, velocities or first moments, second moments)."""
        def copy(arrays: Sequence[Array]) -> list:
            return [np.array(to_numpy(a)) for a in arrays]
        return copy(self.params), copy(self.velocities), copy(self.second)

    def restore(self, asarray: Callable[[Any], Array], params: Sequence[Any],
                velocities: Sequence[Any], second: Sequence[Any], global_step: int) -> None:
        """Put exported state back, in place (the flat buffers keep their views)."""
        for mine, theirs in ((self.params, params), (self.velocities, velocities),
                             (self.second, second)):
            if len(mine) != len(theirs):
                raise ValueError(f"expected {len(mine)} arrays, got {len(theirs)}")
            for a, h in zip(mine, theirs, strict=True):
                a[...] = asarray(np.ascontiguousarray(h))  # saved in the run's own dtype
        self.global_step = global_step

    def _batch_buffers(self, n: int, like: Array) -> _BatchBuffers:
        """The buffers for batches of `n` rows (two sizes at most: full and last partial)."""
        xp, sizes = self.xp, self.config.sizes

        def empty(shape: tuple[int, int]) -> Array:
            return xp.empty(shape, dtype=like.dtype, device=like.device)

        k, hidden = sizes[-1], sizes[1:-1]
        buffers = _BatchBuffers(
            x=empty((n, sizes[0])),
            outs=[*(empty((n, h)) for h in hidden), empty((k, n) if self.transposed else (n, k))],
            downs=[empty((n, h)) for h in hidden],
            scratch=[empty((n, h)) for h in hidden])
        self._buffers[n] = buffers
        return buffers


@dataclass(frozen=True)
class _BatchBuffers:
    """What one batch size reuses from step to step."""

    x: Array  # the gathered inputs
    outs: list[Array]  # each layer's output; the last one (classes, n) with transposed logits
    downs: list[Array]  # the gradient flowing down into each hidden layer's output
    scratch: list[Array]  # for each hidden layer's activation derivative


def _flatten(xp: Any, arrays: Sequence[Array], order: Sequence[int]
             ) -> tuple[Array, list[Array]]:
    """One flat buffer holding copies of `arrays` in `order`, and views of it shaped like them
    (in the arrays' own order)."""
    first = arrays[0]
    flat = xp.empty((sum(_size(a) for a in arrays),), dtype=first.dtype, device=first.device)
    views: list[Array] = [None] * len(arrays)
    lo = 0
    for j in order:
        a = arrays[j]
        view = xp.reshape(flat[lo:lo + _size(a)], a.shape)
        view[...] = a
        views[j] = view
        lo += _size(a)
    return flat, views


def _size(a: Array) -> int:
    return int(math.prod(a.shape))
