"""One training step, built once per run and called for every batch: the plain step, which is
the reference math, and the fast steps, which rearrange the same math for speed.

- PlainStep: network.forward/backward, losses.loss_and_delta and optim's rules, one array at a
  time, in array-API operations only. Any backend; the others are tested against it.
- FlatStep: parameters, gradients and optimizer state as views of flat buffers
  (buffers.flatten), so one call of optim's rule updates every layer; the backend's kernels
  write into reused per-batch buffers (buffers.BatchBuffers) instead of allocating.
- VelocityStep: FlatStep for momentum SGD, with each large weight's momentum
  (optim.momentum: v = m v + g) done inside its gradient's GEMM, through the BLAS's beta.
- StretchStep: a step that trains stretches of steps in one call: CompiledStep (compiled.py),
  the plain step's train_batch traced and compiled whole, for a backend that compiles (jax);
  FusedStep (fused.py), a backend's whole-step kernel on host arrays (numba).

`make_step` picks the fastest that the backend's kernels and the optimizer allow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import device

from trainer.backends import Kernels
from trainer.core import optim
from trainer.core.activations import ACTIVATIONS
from trainer.core.buffers import BatchBuffers, flatten, size
from trainer.core.config import Config
from trainer.core.dropout import keep_mask, step_key
from trainer.core.losses import loss_and_delta
from trainer.core.metrics import hits
from trainer.core.network import backward, forward

Array = Any
# weights from this many elements up get their velocity updated inside the gradient's GEMM;
# below it two passes over v cost less than the extra overhead of the BLAS call (measured)
GEMM_ACC_MIN = 32768


# a step's state: (weights, velocities or Adam's first moments, Adam's second moments)
State = tuple[Sequence[Array], Sequence[Array], Sequence[Array]]


@dataclass(frozen=True)
class Rates:
    """A step's scalars: Python floats for a step called per batch, arrays in the weights'
    dtype inside a compiled step (one row of a table worked out on the host)."""

    scale: Any  # the output delta's factor (Step._scale)
    penalty: Any  # scale * regularization_rate: what the penalty's gradient is multiplied by
    adam: optim.AdamRates | None  # Adam's, for Adam and AdamW


class Step:
    """What every step shares: its state, the dropout masks, export and restore.

    Called as step(x_all, y_all, idx, lr, x=None): train on rows `idx` of x_all (inputs) and
    y_all (integer labels) at rate `lr`; `x`, when given, is x_all's rows `idx` already gathered
    (by a prefetching thread), which the step only reads. Returns (summed loss, number of rows
    whose true class has the largest output), both device scalars: nothing is read back here.
    """

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array]) -> None:
        self.config, self.xp = config, xp
        self.params, self.velocities = list(params), list(velocities)
        self.acts = config.activations
        self.dropouts = config.dropouts  # (config's properties build their lists anew)
        self.dropping = any(self.dropouts)  # no mask bookkeeping in the hot loop without it
        self.regularized = bool(config.regularization_type and config.regularization_rate)
        self.adam = config.optimizer in ("adam", "adamw")
        # Adam's second moments, laid out like the velocities (its first moments)
        self.second: list[Array] = [xp.zeros_like(v) for v in self.velocities] if self.adam else []
        self.global_step = 0  # steps taken: the dropout masks' counter and Adam's t
        self.augment: Callable[[Array, Array], Array] | None = None  # set by the training loop
        self.hash_kernel: Callable[[Array], Array] | None = None
        self.keep_mask_kernel: Callable[..., Array] | None = None
        first = self.params[0]  # row c of the identity: class c's one-hot target
        self._eye = xp.eye(config.sizes[-1], dtype=first.dtype, device=first.device)
        self._counters: dict[tuple[int, int], Array] = {}

    def _scale(self, lr: float, n: int) -> float:
        """What the output delta is multiplied by: SGD folds -lr into it, a mean loss 1/n."""
        scale = 1.0 if self.adam else -lr
        return scale / n if self.config.loss_reduction == "mean" else scale

    def mask(self, layer: int, shape: tuple[int, int], like: Array) -> Array | None:
        """Dropout's multipliers for the input of connection `layer` (`shape`, `like`'s dtype
        and device), or None where that layer has no dropout."""
        p = self.dropouts[layer]
        if not p:
            return None
        if shape not in self._counters:
            self._counters[shape] = self.xp.reshape(
                self.xp.arange(shape[0] * shape[1], dtype=self.xp.int64, device=device(like)),
                shape)
        key = step_key(self.config.seed, self.global_step, layer)
        if self.keep_mask_kernel is not None:
            return self.keep_mask_kernel(self._counters[shape], key, p, like.dtype)
        return keep_mask(self.xp, self._counters[shape], key, p, like.dtype, self.hash_kernel)

    def _adam_rates(self, lr: float, global_step: int) -> optim.AdamRates:
        """Adam's scalars for the step after `global_step` steps."""
        c = self.config
        return optim.adam_rates(lr, global_step + 1, c.beta1, c.beta2,
                                c.weight_decay if c.optimizer == "adamw" else 0.0)

    def _adam(self, w: Array, first: Array, second: Array, g: Array,
              rates: optim.AdamRates) -> tuple[Array, Array, Array]:
        c = self.config
        return optim.adam(w, first, second, g, rates, beta1=c.beta1, beta2=c.beta2,
                          epsilon=c.epsilon)

    def rates(self, lr: float, n: int, global_step: int) -> Rates:
        """A step's scalars, from its learning rate, batch size and number."""
        scale = self._scale(lr, n)
        return Rates(scale, scale * self.config.regularization_rate,
                     self._adam_rates(lr, global_step) if self.adam else None)

    def train_batch(self, state: State, x: Array, onehot: Array,
                    masks: Sequence[Array | None] | None, rates: Rates
                    ) -> tuple[State, Array, Array]:
        """The reference math on one batch: network.forward and backward, losses.loss_and_delta,
        optim's rules, one array at a time. Returns (new state, summed loss, correct count). On a
        mutable backend the state is updated in place (and returned); on an immutable one it is
        a new state, which makes this a pure function that a compiler can trace."""
        c = self.config
        params, velocities, second = (list(arrays) for arrays in state)
        outs, logits = forward(params, self.acts, x, masks)
        loss, delta = loss_and_delta(c.loss, self.acts[-1], logits, outs[-1], onehot)
        correct = hits(logits if c.loss == "cross_entropy" else outs[-1], onehot)
        grads = backward(params, self.acts, outs, delta * rates.scale, masks)
        if self.regularized:
            for i in range(0, len(grads), 2):
                grads[i] = optim.add_penalty(grads[i], params[i], c.regularization_type, 1.0,
                                             rates.penalty)
        for j, g in enumerate(grads):
            if rates.adam is not None:
                params[j], velocities[j], second[j] = self._adam(
                    params[j], velocities[j], second[j], g, rates.adam)
            else:
                params[j], velocities[j] = optim.sgd(params[j], velocities[j], g, c.momentum,
                                                     c.nesterov)
        return (params, velocities, second), loss, correct

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
            self._write(mine, [asarray(np.array(h, order="C")) for h in theirs])
        self.global_step = global_step

    def load_params(self, params: Sequence[Array]) -> None:
        """Make `params` (arrays on this step's device) the weights."""
        self._write(self.params, [self.xp.asarray(p, copy=True) for p in params])

    def _write(self, mine: list[Array], values: Sequence[Array]) -> None:
        """Put `values` in the place of the arrays of `mine`, a list of the step's state."""
        for a, v in zip(mine, values, strict=True):
            if tuple(a.shape) != tuple(v.shape):
                raise ValueError(f"expected an array of shape {tuple(a.shape)}, got "
                                 f"{tuple(v.shape)}")
        mine[:] = values  # (the same list: whoever holds it sees the new arrays)


class PlainStep(Step):
    """The reference: network.py + losses.py + optim.py, one array at a time (train_batch)."""

    def __call__(self, x_all: Array, y_all: Array, idx: Array, lr: float,
                 x: Array | None = None) -> tuple[Array, Array]:
        xp, c = self.xp, self.config
        x = xp.take(x_all, idx, axis=0) if x is None else x
        if self.augment is not None:
            x = self.augment(x, idx)
        onehot = xp.take(self._eye, xp.take(y_all, idx), axis=0)
        n = idx.shape[0]
        masks = ([self.mask(i, (n, c.sizes[i]), x) for i in range(len(self.acts))]
                 if self.dropping else None)
        state, loss, correct = self.train_batch(
            (self.params, self.velocities, self.second), x, onehot, masks,
            self.rates(lr, n, self.global_step))
        for mine, new in zip((self.params, self.velocities, self.second), state, strict=True):
            mine[:] = new  # the same arrays on a mutable backend
        self.global_step += 1
        return loss, correct


class FlatStep(Step):
    """network.py + losses.py rearranged for speed, and optim.py's rule once over flat buffers.

    The backend's kernels (Kernels: matmul, sum0, and whichever others it offers) write into
    reused buffers. With cross-entropy and a softmax_xent_t kernel the logits are kept
    transposed (classes x samples), the layout that kernel reduces fast.
    """

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], kernels: Kernels,
                 in_gemm: Sequence[bool] | None = None) -> None:
        super().__init__(config, xp, params, velocities)
        self.kernels = kernels
        self.hash_kernel, self.keep_mask_kernel = kernels.hash32, kernels.keep_mask
        self.fused_ce = config.loss == "cross_entropy"
        # in_gemm[i]: weight i's momentum is done in its gradient's GEMM (VelocityStep); those
        # weights come first in the flat buffers, so the rest's momentum is one pass
        self.in_gemm = list(in_gemm or [False] * len(self.acts))
        big = [2 * i for i, acc in enumerate(self.in_gemm) if acc]
        order = big + [j for j in range(len(self.params)) if j not in big]
        self.flat_params, self.params = flatten(xp, self.params, order)
        self.flat_velocities, self.velocities = flatten(xp, self.velocities, order)
        self.flat_grads, self.grads = flatten(xp, self.params, order)
        if self.adam:
            self.flat_second, self.second = flatten(xp, self.second, order)
        self.transposed = self.fused_ce and kernels.softmax_xent_t is not None
        self._buffers: dict[int, BatchBuffers] = {}

    def _write(self, mine: list[Array], values: Sequence[Array]) -> None:
        for a, v in zip(mine, values, strict=True):
            a[...] = v  # in place: they are views of the flat buffers

    def __call__(self, x_all: Array, y_all: Array, idx: Array, lr: float,
                 x: Array | None = None) -> tuple[Array, Array]:
        xp, n = self.xp, idx.shape[0]
        bufs = self._buffers.get(n)
        if bufs is None:  # two sizes at most: the full batch and the last, partial one
            bufs = self._buffers[n] = BatchBuffers.empty(xp, self.config.sizes, n, x_all,
                                                         self.transposed)
        k = self.kernels
        if x is None:
            x = k.take(x_all, idx, bufs.x) if k.take else xp.take(x_all, idx, axis=0)
        if self.augment is not None:
            x = self.augment(x, idx)
        outs, kept, masks = self._forward(x, bufs)
        scale = self._scale(lr, n)
        loss, correct, delta = self._loss(outs[-1], y_all, idx, scale)
        self._backward(outs, kept, masks, delta, scale, bufs)
        self._update(lr)
        self.global_step += 1
        return loss, correct

    def _forward(self, x: Array, bufs: BatchBuffers
                 ) -> tuple[list[Array], list[Array], list[Array | None]]:
        """network.forward into the buffers: each layer's input to the next connection (after
        dropout), each layer's own output (before it), and the masks. With fused cross-entropy
        the last output is the logits (losses' softmax comes in `_loss`)."""
        k, last = self.kernels, len(self.acts) - 1
        dropping = self.dropping
        masks: list[Array | None] = [self.mask(0, x.shape, x) if dropping else None]
        kept, outs = [x], [x if masks[0] is None else x * masks[0]]
        for i, act in enumerate(self.acts):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            if i == last and self.transposed:  # (classes, samples) = w^T a^T; the fused
                # kernel adds the bias
                a = k.matmul(w.T, outs[-1].T, bufs.outs[i])
            else:
                a = self._layer(act, k.matmul(outs[-1], w, bufs.outs[i]), b,
                                i == last and self.fused_ce)
            masks.append(self.mask(i + 1, a.shape, a) if dropping and i < last else None)
            kept.append(a)
            outs.append(a if masks[-1] is None else a * masks[-1])
        return outs, kept, masks

    def _layer(self, act: str, z: Array, b: Array, logits: bool) -> Array:
        """activation(z + b), in place where the kernels can (logits: z + b only)."""
        k = self.kernels
        a = k.bias_activate("identity" if logits else act, z, b) if k.bias_activate else None
        if a is not None:
            return a
        z += b
        if logits:
            return z
        a = k.activate(act, z) if k.activate else None
        return a if a is not None else ACTIVATIONS[act][0](z)

    def _loss(self, out: Array, y_all: Array, idx: Array, scale: float
              ) -> tuple[Array, Array, Array]:
        """(summed loss, correct count, delta = scale * d loss / d last pre-activation):
        losses.loss_and_delta, or its fused kernel on transposed logits (which also adds the
        last bias, picks the labels and writes the last bias's gradient)."""
        if self.transposed:
            loss, correct, delta_t = self.kernels.softmax_xent_t(
                out, self.params[-1], y_all, idx, scale, self.grads[-1])
            return loss, correct, delta_t.T
        target = self.xp.take(self._eye, self.xp.take(y_all, idx), axis=0)
        c = self.config
        probs = ACTIVATIONS["softmax"][0](out) if self.fused_ce else out
        loss, delta = loss_and_delta(c.loss, self.acts[-1], out, probs, target)
        return loss, hits(out, target), delta * scale

    def _backward(self, outs: list[Array], kept: list[Array], masks: list[Array | None],
                  delta: Array, scale: float, bufs: BatchBuffers) -> None:
        """network.backward into the buffers, each layer's gradient into the flat buffer."""
        k = self.kernels
        for i in range(len(self.acts) - 1, -1, -1):
            down = None
            if i > 0:  # w before its update
                down = k.matmul(delta, self.params[2 * i].T, bufs.downs[i - 1])
            self._gradient(i, outs[i], delta, scale)
            if i > 0:
                act, a, mask = self.acts[i - 1], kept[i], masks[i]
                grad = (k.activate_grad(act, a, down, bufs.scratch[i - 1], mask)
                        if k.activate_grad else None)
                if grad is None:
                    if mask is not None:
                        down *= mask  # the step's own buffer
                    grad = ACTIVATIONS[act][1](a, down)
                delta = grad

    def _gradient(self, i: int, a_in: Array, delta: Array, scale: float) -> None:
        """Layer i's scaled gradients into the flat gradient buffer (its momentum as well, for a
        weight whose GEMM does it), with the penalty's."""
        w, k = self.params[2 * i], self.kernels
        if self.in_gemm[i]:  # v = m v + a^T delta: optim.momentum inside the GEMM
            grad_w = self.velocities[2 * i]
            k.gemm_acc(a_in.T, delta, grad_w, 1.0, self.config.momentum)
        else:  # for a small GEMM NumPy's call is cheaper than the BLAS's own
            grad_w = k.matmul(a_in.T, delta, self.grads[2 * i])
        if not (self.transposed and i == len(self.acts) - 1):  # (the fused kernel's job)
            k.sum0(delta, self.grads[2 * i + 1])
        if self.regularized:  # after the velocity GEMM it lands in v directly: v = m v + step
            optim.add_penalty(grad_w, w, self.config.regularization_type,
                              self.config.regularization_rate, scale)

    def _update(self, lr: float) -> None:
        """optim's rule, once over the flat buffers."""
        c = self.config
        if self.adam:
            self._adam(self.flat_params, self.flat_velocities, self.flat_second,
                       self.flat_grads, self._adam_rates(lr, self.global_step))
        elif self.kernels.sgd_update:
            self.kernels.sgd_update(self.flat_params, self.flat_velocities, self.flat_grads,
                                    c.momentum, c.nesterov, 0)
        else:
            optim.sgd(self.flat_params, self.flat_velocities, self.flat_grads, c.momentum,
                      c.nesterov)


class VelocityStep(FlatStep):
    """Momentum SGD whose large weights' momentum happens in their gradient's GEMM (BLAS's
    beta: v = m v + a^T delta), then one pass does the rest's (small weights and biases) and
    one adds v to w, on the BLAS's threads where the backend offers axpy."""

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], kernels: Kernels) -> None:
        in_gemm = [size(w) >= GEMM_ACC_MIN for w in params[::2]]
        super().__init__(config, xp, params, velocities, kernels, in_gemm)
        self.rest = sum(size(self.params[2 * i]) for i, acc in enumerate(self.in_gemm) if acc)
        self._rest = (self.flat_velocities[self.rest:], self.flat_grads[self.rest:])
        # w += v on the BLAS's threads (they matter once w and v are out of the cache)
        self._add_velocity = (kernels.axpy(self.flat_velocities, self.flat_params)
                              if kernels.axpy else None)

    def _update(self, lr: float) -> None:
        # both passes in one (a device: one launch, not two), unless the BLAS adds v to w
        if self.kernels.sgd_update and not self._add_velocity:
            self.kernels.sgd_update(self.flat_params, self.flat_velocities, self.flat_grads,
                                    self.config.momentum, False, self.rest)
            return
        optim.momentum(*self._rest, self.config.momentum)
        if self._add_velocity:
            self._add_velocity(1.0)
        else:
            self.flat_params += self.flat_velocities


class StretchStep(Step):
    """A step that trains stretches of consecutive steps in one call (CompiledStep, FusedStep):
    the training loop calls `begin_epoch` with the epoch's data, batch order and learning rates,
    then `run` for each stretch; calling it per batch is an error."""

    def __call__(self, x_all: Array, y_all: Array, idx: Array, lr: float,
                 x: Array | None = None) -> tuple[Array, Array]:
        raise TypeError(f"a {type(self).__name__} trains stretches of an epoch: begin_epoch, "
                        "then run")

    def begin_epoch(self, x_all: Array, y_all: Array, perm: Array, lrs: Sequence[float],
                    done: int) -> None:
        """Get ready for an epoch whose `done` first steps are done: its training data, batch
        order (rows of x_all and y_all) and each step's learning rate."""
        raise NotImplementedError

    def run(self, first: int, count: int, loss_sum: float, correct: float
            ) -> tuple[float, float, int | None, float]:
        """Train steps first .. first + count - 1 of the epoch (0-based; all on full batches,
        or the last, partial one alone), stopping after a step whose loss says that training
        diverged. Returns the epoch's (summed loss, correct count) so far, added to the given
        ones, the diverged step (or None) and the last step's summed loss."""
        raise NotImplementedError


def make_step(config: Config, xp: Any, params: Sequence[Array], velocities: Sequence[Array],
              kernels: Kernels | None = None) -> Step:
    """The fastest step that `kernels` and the optimizer allow (None: the plain step)."""
    k = kernels or Kernels()
    if k.matmul is None or k.sum0 is None:
        return PlainStep(config, xp, params, velocities)
    if k.gemm_acc is not None and config.optimizer == "sgd" and not config.nesterov:
        return VelocityStep(config, xp, params, velocities, k)
    return FlatStep(config, xp, params, velocities, k)
