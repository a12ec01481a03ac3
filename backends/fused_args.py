"""The record trainer/core/step/fused.py's FusedStep hands a backend's whole-step kernel
(numba_step.py's `steps`), and the kernel's activation codes: defined once, here, below both
(this module imports no numba)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# the kernel's codes for a hidden layer's activation
IDENTITY, SIGMOID, TANH, RELU = 0, 1, 2, 3
HIDDEN = {"identity": IDENTITY, "sigmoid": SIGMOID, "tanh": TANH, "relu": RELU}


class FusedArgs(NamedTuple):
    """What the kernel trains on and with (numba takes a namedtuple of arrays as it is): the
    epoch's data and scalars, the network and its state, the work buffers. `steps(args, first,
    count, batch)` trains steps first .. first + count - 1, each on `batch` rows."""

    x_all: np.ndarray  # the epoch's inputs, one row each
    labels_all: np.ndarray  # their integer classes
    perm: np.ndarray  # int64: the batch order; step s trains rows perm[s * batch_size:][:batch]
    scales: np.ndarray  # step s's delta factor (core's Step.scale: -lr, or -lr / n for a mean)
    batch_size: int
    sizes: np.ndarray  # int64: the layer sizes
    acts: np.ndarray  # int64: each layer's activation code (HIDDEN), the last one ignored
    # the weights and biases [W0, b0, W1, b1, ...] in one flat buffer, W_i (fan_in, fan_out)
    # row-major from offsets[2 i], b_i from offsets[2 i + 1]; their velocities laid out alike
    w: np.ndarray
    v: np.ndarray
    offsets: np.ndarray  # int64
    momentum: float
    xbuf: np.ndarray  # work: batch_size x sizes[0]
    hbuf: np.ndarray  # work: batch_size x sum(sizes[1:]), every layer's output
    dbuf: np.ndarray  # work: 2 x batch_size x the widest hidden layer, the gradient going down
    labels: np.ndarray  # work: int64, batch_size
    sums: np.ndarray  # float64 (summed loss, correct count): each step's added in place
    bound: float  # a step whose mean loss is above it (or not finite) has diverged
