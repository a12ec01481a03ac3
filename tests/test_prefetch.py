"""The batch-gathering thread (backends/prefetch.py): the right rows, stopped cleanly, and
training with it bitwise equal to training without it."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from conftest import make_dataset

from trainer import backends
from trainer.backends import prefetch
from trainer.backends.prefetch import Prefetch
from trainer.core.config import Config
from trainer.run.results import Engine
from trainer.run.train import train


@pytest.mark.parametrize("batch_size", [7, 16, 100])
@pytest.mark.parametrize("first_step", [0, 3])
def test_each_batch_is_the_rows_of_its_indices(batch_size: int, first_step: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "CHUNK_ROWS", 32)  # several chunks, the last one partial
    rng = np.random.default_rng(0)
    x = rng.random((250, 6), dtype=np.float32)
    perm = rng.permutation(250)
    steps = -(-250 // batch_size)
    ahead = Prefetch(x, perm, batch_size, first_step)
    batches = iter(ahead)
    try:
        for step in range(first_step, steps):
            lo, hi = step * batch_size, min(step * batch_size + batch_size, 250)
            np.testing.assert_array_equal(next(batches), x[perm[lo:hi]], err_msg=f"step {step}")
        with pytest.raises(StopIteration):
            next(batches)
    finally:
        ahead.close()
    assert not ahead.worker.is_alive()


@pytest.mark.parametrize("taken", [0, 1, 5])
def test_close_part_way_stops_the_worker(taken: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "CHUNK_ROWS", 8)
    x = np.arange(400 * 3, dtype=np.float32).reshape(400, 3)
    ahead = Prefetch(x, np.arange(400), 4)
    batches = iter(ahead)
    for _ in range(taken):
        next(batches)
    ahead.close()
    assert not ahead.worker.is_alive()


def test_an_error_in_the_worker_is_raised_in_the_training_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def take(*args, **kwargs):
        raise MemoryError("no room for the batch")

    monkeypatch.setattr(prefetch.np, "take", take)
    ahead = Prefetch(np.zeros((10, 2), np.float32), np.arange(10), 5)
    with pytest.raises(MemoryError, match="no room"):
        next(iter(ahead))
    ahead.close()
    assert not ahead.worker.is_alive()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the batch thread needs a spare core")
def test_training_with_prefetch_equals_training_without() -> None:
    """Bitwise, with the shift augmentation, dropout and a last partial batch."""
    be = backends.load("numpy")
    used = []

    def spy(*args) -> Prefetch:
        used.append(args[3])  # the first step
        return Prefetch(*args)

    with_it = dataclasses.replace(be, kernels=dataclasses.replace(be.kernels, prefetch=spy))
    without = dataclasses.replace(be, kernels=be.kernels.without("prefetch"))
    config = Config.from_dict({
        "layers": [{"nodes": 36, "activation": "relu", "dropout": 0.1},
                   {"nodes": 12, "activation": "softmax"}, {"nodes": 4}],
        "learning_rate": 0.01, "momentum": 0.9, "batch_size": 24, "epochs": 3,
        "augment": {"shift": 1}})
    data = make_dataset(n_train=500, n_test=50, shape=(6, 6), classes=4, seed=2)
    a = train(config, data, with_it, engine=Engine(blas_threads=1))
    b = train(config, data, without)
    assert used == [0, 0, 0]  # one per epoch
    # the BLAS may take every core: no thread
    train(config, data, with_it, engine=Engine(blas_threads=None))
    train(config, data, with_it, engine=Engine(blas_threads=1, prefetch=False))  # as sweeps ask
    assert used == [0, 0, 0]
    for p, q in zip(a.params, b.params, strict=True):
        assert np.array_equal(p, q)
    assert [h.loss for h in a.history] == [h.loss for h in b.history]
    assert [h.train_accuracy for h in a.history] == [h.train_accuracy for h in b.history]
