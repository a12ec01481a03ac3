"""The rows each training step receives: every row once per epoch, a new order each epoch, the
same order for the same seed, and all of it across a mid-epoch resume."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from conftest import make_dataset

from trainer.core.config import Config
from trainer.core.step import FlatStep, PlainStep
from trainer.run.results import Callbacks, Engine, Interrupted
from trainer.run.train import train

N_TRAIN, BATCH = 203, 16  # 12 full batches and a partial one of 11 rows
STEPS = -(-N_TRAIN // BATCH)


def config(seed: int = 0, epochs: int = 3) -> Config:
    return Config.from_dict({
        "layers": [{"nodes": 20, "activation": "sigmoid"}, {"nodes": 8, "activation": "softmax"},
                   {"nodes": 4}],
        "learning_rate": 0.01, "momentum": 0.5, "batch_size": BATCH, "epochs": epochs,
        "seed": seed})


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every step's training rows, in order, as indices into the training array."""
    steps: list[np.ndarray] = []

    def recorder(original):
        def recording(self, x_all, y_all, idx, lr, x=None):
            idx = np.asarray(idx).copy()
            if x is not None:  # gathered ahead by the prefetch thread: they must be these rows
                np.testing.assert_array_equal(np.asarray(x), np.asarray(x_all)[idx])
            steps.append(idx)
            return original(self, x_all, y_all, idx, lr, x)
        return recording

    for step_class in (PlainStep, FlatStep):  # VelocityStep is a FlatStep
        monkeypatch.setattr(step_class, "__call__", recorder(step_class.__call__))
    return steps


def epochs_of(steps: list[np.ndarray]) -> list[np.ndarray]:
    """The rows of each epoch, in the order the steps saw them."""
    assert len(steps) % STEPS == 0, f"{len(steps)} steps is not a whole number of epochs"
    return [np.concatenate(steps[i:i + STEPS]) for i in range(0, len(steps), STEPS)]


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
def test_every_row_once_per_epoch_in_a_new_order(recorded: list[np.ndarray],
                                                 prefetch: bool) -> None:
    data = make_dataset(n_train=N_TRAIN, n_test=20)
    train(config(), data, "numpy", engine=Engine(prefetch=prefetch))
    assert len(recorded) == 3 * STEPS
    assert [len(s) for s in recorded[:STEPS]] == [BATCH] * (STEPS - 1) + [N_TRAIN % BATCH]
    orders = epochs_of(recorded)
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(N_TRAIN))
    assert not np.array_equal(orders[0], np.arange(N_TRAIN))  # shuffled
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


def test_the_seed_fixes_the_order(recorded: list[np.ndarray]) -> None:
    data = make_dataset(n_train=N_TRAIN, n_test=20)
    orders = []
    for seed in (0, 0, 1):
        train(config(seed, epochs=2), data, "numpy")
        orders.append(epochs_of(recorded))
        recorded.clear()
    for a, b in zip(orders[0], orders[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(orders[0][0], orders[2][0])


def test_a_mid_epoch_resume_continues_the_same_order(recorded: list[np.ndarray]) -> None:
    data = make_dataset(n_train=N_TRAIN, n_test=20)
    train(config(), data, "numpy")
    straight = list(recorded)
    recorded.clear()
    states = []
    asked = []

    def stop_requested() -> int | None:  # asked after every step and at every epoch's end
        asked.append(1)
        return signal.SIGINT if len(asked) == STEPS + 1 + 5 else None  # epoch 2, step 5

    with pytest.raises(Interrupted):
        train(config(), data, "numpy",
              callbacks=Callbacks(checkpoint=states.append, stop_requested=stop_requested))
    assert (states[-1].epoch, states[-1].step) == (2, 5)
    assert len(recorded) == STEPS + 5
    train(config(), data, "numpy", resume=states[-1])
    assert len(recorded) == len(straight)
    for got, want in zip(recorded, straight, strict=True):
        np.testing.assert_array_equal(got, want)
    for order in epochs_of(recorded):
        np.testing.assert_array_equal(np.sort(order), np.arange(N_TRAIN))
