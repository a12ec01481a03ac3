"""The fast per-batch steps: reference.train_batch rearranged for speed.

- FlatStep: parameters, gradients and optimizer state as views of flat buffers
  (buffers.flatten), so one call of optim's rule updates every layer; the backend's kernels
  write into reused per-batch buffers (buffers.BatchBuffers) instead of allocating.
- VelocityStep: FlatStep for momentum SGD, with each large weight's momentum
  (optim.momentum: v = m v + g) done inside its gradient's GEMM, through the BLAS's beta.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainer.backends import Kernels
from trainer.core import optim
from trainer.core.activations import ACTIVATIONS
from trainer.core.buffers import BatchBuffers, flatten, size
from trainer.core.config import Config
from trainer.core.losses import loss_and_delta
from trainer.core.metrics import hits
from trainer.core.step.batch import BatchStep

Array = Any
# weights from this many elements up get their velocity updated inside the gradient's GEMM;
# below it two passes over v cost less than the extra overhead of the BLAS call (measured)
GEMM_ACC_MIN = 32768


class FlatStep(BatchStep):
    """network.py + losses.py rearranged for speed, and optim.py's rule once over flat buffers.

    The backend's kernels (Kernels: matmul, sum0, and whichever others it offers) write into
    reused buffers. With cross-entropy and a softmax_xent_t kernel the logits are kept
    transposed (classes x samples), the layout that kernel reduces fast.
    """

    kind = "flat"

    def __init__(self, config: Config, xp: Any, params: Sequence[Array],
                 velocities: Sequence[Array], kernels: Kernels,
                 in_gemm: Sequence[bool] | None = None) -> None:
        super().__init__(config, xp, params, velocities, kernels)
        self.kernels = kernels
        self.hash_kernel, self.keep_mask_kernel = kernels.hash32, kernels.keep_mask
        self.fused_ce = config.loss == "cross_entropy"
        # in_gemm[i]: weight i's momentum is done in its gradient's GEMM (VelocityStep); those
        # weights come first in the flat buffers, so the rest's momentum is one pass
        self.in_gemm = list(in_gemm or [False] * len(self.acts))
        big = [2 * i for i, acc in enumerate(self.in_gemm) if acc]
        order = big + [j for j in range(len(self.params)) if j not in big]
        self._flatten(order)
        self.flat_grads, self.grads = flatten(xp, self.params, order)
        self.transposed = self.fused_ce and kernels.softmax_xent_t is not None
        self._buffers: dict[int, BatchBuffers] = {}

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
        scale = self.scale(lr, n)
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
            optim.adam(self.flat_params, self.flat_velocities, self.flat_second,
                       self.flat_grads, self.adam_rates(lr, self.global_step), beta1=c.beta1,
                       beta2=c.beta2, epsilon=c.epsilon)
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

    kind = "velocity"

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
