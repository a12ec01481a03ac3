"""The record trainer/core/step/fused.py's FusedStep hands a backend's whole-step kernel
(numba_step.py's `steps`), and the kernel's codes: defined once, here, below both (this module
imports no numba)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# the kernel's codes for a hidden layer's activation
IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU = 0, 1, 2, 3, 4
HIDDEN = {"identity": IDENTITY, "sigmoid": SIGMOID, "tanh": TANH, "relu": RELU,
          "leaky_relu": LEAKY_RELU}
# the update rules (optim.py): momentum SGD with its velocity done in the gradient's GEMM;
# Nesterov's and Adam's, from a gradient buffer
MOMENTUM, NESTEROV, ADAM = 0, 1, 2
# the penalty on the weights (optim.add_penalty)
NO_PENALTY, L2, L1 = 0, 1, 2


class FusedArgs(NamedTuple):
    """What the kernel trains on and with (numba takes a namedtuple of arrays as it is): the
    epoch's data and per-step scalars, the network and its state, the work buffers.
    `steps(args, first, count, batch, gathered)` trains steps first .. first + count - 1, each
    on `batch` rows (gathered: step `first`'s batch is already in xbuf and labels)."""

    x_all: np.ndarray  # the epoch's inputs, one row each
    labels_all: np.ndarray  # their integer classes
    perm: np.ndarray  # int64: the batch order; step s trains rows perm[s * batch_size:][:batch]
    # step s's scalars, in the weights' dtype (core's Rates): the delta factor (Step.scale: -lr,
    # or -lr / n for a mean; 1 or 1 / n for Adam), the penalty's factor, Adam's step size,
    # second-moment correction and AdamW's shrink of w
    scales: np.ndarray
    penalties: np.ndarray
    adam_steps: np.ndarray
    adam_bias2: np.ndarray
    adam_decay: np.ndarray
    keys: np.ndarray  # int64 (steps, layers): dropout.step_key of step s and connection i
    batch_size: int
    sizes: np.ndarray  # int64: the layer sizes
    acts: np.ndarray  # int64: each layer's activation code (HIDDEN), the last one ignored
    # dropout on each connection's input: keep where hash32 >= thresholds[i] (int(p 2**32)),
    # times keeps[i] = 1 / (1 - p) in the weights' dtype; keeps[i] 0: no dropout there
    thresholds: np.ndarray
    keeps: np.ndarray
    update: int  # MOMENTUM, NESTEROV or ADAM
    penalty: int  # NO_PENALTY, L2 or L1
    decay: bool  # AdamW: w shrinks by adam_decay[s] first
    momentum: float
    beta1: float
    beta2: float
    epsilon: float
    slope: float  # leaky ReLU's
    # the weights and biases [W0, b0, W1, b1, ...] in one flat buffer, W_i (fan_in, fan_out)
    # row-major from offsets[2 i], b_i from offsets[2 i + 1]; the velocities (Adam's first
    # moments), Adam's second moments and the gradients laid out alike (the last two empty
    # where the update needs none)
    w: np.ndarray
    v: np.ndarray
    s2: np.ndarray
    g: np.ndarray
    offsets: np.ndarray  # int64
    xbuf: np.ndarray  # work: batch_size x sizes[0]
    hbuf: np.ndarray  # work: batch_size x sum(sizes[1:]), every layer's output
    dbuf: np.ndarray  # work: 2 x batch_size x the widest hidden layer, the gradient going down
    # work, batch_size x sum(sizes[:-1]) each (empty without dropout): each connection's input
    # after dropout, and its multipliers
    ibuf: np.ndarray
    mbuf: np.ndarray
    labels: np.ndarray  # work: int64, batch_size
    sums: np.ndarray  # float64 (summed loss, correct count): each step's added in place
    bound: float  # a step whose mean loss is above it (or not finite) has diverged
