"""What every peer does alike on the host: the epoch's batch order, the project's augmentation
of each batch (with our fastest CPU backend's kernels), the schedule's rate per step and the
project's initial weights. See peers.py for how augmentation is counted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from array_api_compat import numpy as xp

from trainer.core.augment import Shifter, chain
from trainer.core.config import Config
from trainer.core.elastic import ElasticWarp
from trainer.core.network import init_params
from trainer.core.schedule import learning_rate
from trainer.data.dataset import InputScaling


class Feed:
    """The training rows `x` (scaled, the config's dtype) and labels `y` (int64), served as
    (inputs, labels, rate) per step of an epoch: rows gathered in the epoch's random order, then
    warped and shifted as the config asks."""

    def __init__(self, config: Config, x: np.ndarray, y: np.ndarray, shape: tuple[int, int],
                 background: float) -> None:
        from trainer import backends

        self.config, self.x, self.y = config, x, y.astype(np.int64)
        self.n, self.size = len(x), config.batch_size
        self.steps = -(-self.n // self.size)  # the last, partial batch included
        self.full = self.n // self.size  # steps on a full batch
        self.rng = np.random.default_rng(config.seed)
        dtype, aug = getattr(np, config.dtype), config.augment
        kernels = fastest_augmentation(backends)
        self.warp = ElasticWarp(
            xp, np.ascontiguousarray, shape, alpha=aug.elastic_alpha, sigma=aug.elastic_sigma,
            rotate=aug.rotate, scale=aug.scale, background=background, seed=config.seed,
            dtype=dtype, hash_kernel=kernels.hash32, kernel=kernels.elastic) if aug.warps else None
        self.shifter = Shifter(xp, np.ascontiguousarray, shape, aug.shift, background,
                               dtype, kernel=kernels.shift) if aug.shift else None
        self.augment = chain(self.warp, self.shifter)  # warped first, then shifted
        self.blas = numpy_blas()
        self.perm = np.arange(self.n)
        self.lrs = [config.learning_rate] * self.steps

    @classmethod
    def from_dataset(cls, config: Config, data: Any) -> Feed:
        """All of `data`'s training images, scaled as a run scales them."""
        scaling = InputScaling.fit(data.train_images, config.input_scaling)
        blank = float(scaling.apply(np.zeros((1, 1, 1), np.uint8), dtype=np.float64)[0, 0])
        return cls(config, scaling.apply(data.train_images, dtype=config.dtype),
                   data.train_labels, data.image_shape, blank)

    def begin(self, epoch: int) -> np.ndarray:
        """Start epoch `epoch` (1-based): draw its order and shifts, pick its warps, work out
        each step's rate. Returns the order."""
        self.perm = self.rng.permutation(self.n)
        if self.shifter is not None:
            self.shifter.use(self.shifter.draw(self.rng, self.n))
        if self.warp is not None:
            self.warp.use(epoch)
        self.lrs = [learning_rate(self.config, epoch, s, self.steps) for s in range(self.steps)]
        return self.perm

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Step `step`'s inputs (augmented) and labels, in this epoch's order."""
        idx = self.perm[step * self.size:(step + 1) * self.size]
        x = np.take(self.x, idx, axis=0)
        if self.augment is not None:
            # one BLAS thread: the warp's GEMMs are small (train.auto_blas_threads's rule), and
            # NumPy's BLAS threads spinning beside the peer's own pool would time their clash
            # (measured here: 38 ms a batch of 128 with two threads under load, 4 with one)
            threads = [lib.num_threads for lib in self.blas]
            for lib in self.blas:
                lib.set_num_threads(1)
            try:
                # a copy: the kernels return buffers they overwrite on their next call, and a
                # peer may still be reading this batch then (JAX's dispatch is asynchronous
                # and may share the host's memory)
                x = np.array(self.augment(x, idx))
            finally:
                for lib, n in zip(self.blas, threads, strict=True):
                    lib.set_num_threads(n)
        return x, self.y[idx]

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
        """Epoch `epoch`'s steps: (inputs, labels, rate) each."""
        self.begin(epoch)
        for step in range(self.steps):
            yield (*self.batch(step), self.lrs[step])


def fastest_augmentation(backends: Any) -> Any:
    """The kernels of our fastest augmentation on the host: numba's compiled warp and shift
    where numba loads (the numba backend's own), else NumPy's. Every peer augments with the
    very code our fastest CPU backend runs, so augmentation costs them all alike."""
    try:
        return backends.load("numba").kernels
    except ImportError:
        return backends.load("numpy").kernels


def numpy_blas() -> list[Any]:
    """threadpoolctl's controllers of NumPy's own BLAS (not torch's, say)."""
    from threadpoolctl import ThreadpoolController

    return [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and "numpy" in str(lib.filepath)]


def initial_params(config: Config) -> list[np.ndarray]:
    """The project's initial weights [W0, b0, ...] (W: fan_in x fan_out) for `config`."""
    return init_params(config.sizes, config.activations, config.init,
                       np.random.default_rng(config.seed), config.dtype)
