"""The 99% recipe's pieces: Adam/AdamW, schedules, dropout, augmentation, early stopping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_dataset
from helpers import LAYERS, recipe_config, skip_if_numpys_step
from references import adam_reference

from trainer import backends
from trainer.core.augment import Shifter, shift_table
from trainer.core.config import Config
from trainer.core.dropout import hash32, keep_mask, step_key
from trainer.core.network import init_params, predict
from trainer.core.schedule import learning_rate
from trainer.core.step import make_step
from trainer.errors import ConfigError
from trainer.run.results import Callbacks
from trainer.run.train import train


@pytest.fixture
def backend(step_backend: backends.Backend) -> backends.Backend:
    """conftest's step_backend: numba's per-batch steps are numpy's own code (NumPy against
    itself proves nothing); its fused step is tested in test_numba_step.py."""
    return step_backend

# --- Adam and AdamW against the textbook update, step by step ---------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_matches_hand_computation(backend: backends.Backend, optimizer: str) -> None:
    cfg = recipe_config(optimizer=optimizer, weight_decay=0.1, beta1=0.8, beta2=0.95)
    rng = np.random.default_rng(0)
    x, labels = rng.normal(0, 1, (9, 6)), rng.integers(0, 3, 9)
    t = np.eye(3)[labels]
    host = init_params(cfg.sizes, cfg.activations, "xavier", rng, "float64")
    batches = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7]), np.array([8])]
    want = adam_reference(cfg, host, x, t, batches, 0.01)
    for kernels in (None, backend.kernels) if backend.kernels.offered() else (None,):
        step = make_step(cfg, backend.xp, [backend.asarray(p.copy()) for p in host],
                         [backend.asarray(np.zeros_like(p)) for p in host], kernels)
        for idx in batches:
            step(backend.asarray(x), backend.asarray(labels), backend.asarray(idx), 0.01)
        for got, w in zip(step.params, want, strict=True):
            np.testing.assert_allclose(backend.to_numpy(got), w, rtol=1e-10, atol=1e-12)


# --- learning-rate schedules against their formulas -------------------------------------------

@pytest.mark.parametrize(("schedule", "formula"), [
    ({"type": "constant"}, lambda t: 0.1),
    ({"type": "step", "step_epochs": 3, "gamma": 0.5}, lambda t: 0.1 * 0.5 ** (t // 3)),
    ({"type": "exponential", "gamma": 0.9}, lambda t: 0.1 * 0.9 ** t),
    ({"type": "cosine", "min_lr": 0.01},
     lambda t: 0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t / 10))),
])
def test_schedules_follow_their_formula(schedule: dict, formula) -> None:
    cfg = recipe_config(learning_rate=0.1, epochs=10, lr_schedule=schedule)
    for epoch in range(1, 11):
        for step in (0, 2, 4):
            t = epoch - 1 + step / 5
            assert learning_rate(cfg, epoch, step, 5) == pytest.approx(formula(t))


def test_warmup_rises_linearly_then_follows_the_schedule() -> None:
    cfg = recipe_config(learning_rate=0.1, epochs=10, lr_schedule={"type": "constant",
                                                             "warmup_epochs": 2})
    rates = [learning_rate(cfg, e, s, 4) for e in (1, 2, 3) for s in range(4)]
    assert rates[:8] == pytest.approx([0.1 * (k + 1) / 8 for k in range(8)])
    assert rates[8:] == pytest.approx([0.1] * 4)


# --- dropout -----------------------------------------------------------------------------------

def test_dropout_keeps_the_expected_activation(backend: backends.Backend) -> None:
    xp = backend.xp
    counter = xp.reshape(xp.arange(200 * 500, dtype=xp.int64), (200, 500))
    for p in (0.2, 0.5):
        mask = backend.to_numpy(keep_mask(xp, counter, step_key(0, 7, 1), p, xp.float64,
                                          backend.kernels.hash32))
        assert set(np.unique(mask)) == {0.0, 1 / (1 - p)}
        assert np.mean(mask == 0) == pytest.approx(p, abs=0.01)
        assert np.mean(mask) == pytest.approx(1.0, abs=0.02)  # E[a * mask] = a
        other = backend.to_numpy(keep_mask(xp, counter, step_key(0, 8, 1), p, xp.float64))
        assert np.mean((mask == 0) == (other == 0)) < 0.75  # a new step draws a new mask


def test_fast_hash_is_the_generic_hash() -> None:
    be = backends.load("numpy")
    x = (np.arange(50_000, dtype=np.int64) * 2_654_435_761) % 2**32
    assert np.array_equal(be.kernels.hash32(x), hash32(x))


def test_no_dropout_at_evaluation() -> None:
    """A network trained with heavy dropout is evaluated whole: its test predictions are those of
    a plain NumPy forward pass of its weights, with no mask and no 1/(1-p) scaling."""
    data = make_dataset(n_train=300, n_test=200, shape=(6, 6), classes=4, seed=2)
    cfg = recipe_config(layers=[{"nodes": 36, "activation": "relu", "dropout": 0.5},
                         {"nodes": 16, "activation": "sigmoid", "dropout": 0.5}, {"nodes": 4}],
                 loss="mse", epochs=2, batch_size=16)
    result = train(cfg, data, "numpy")
    w0, b0, w1, b1 = result.params
    x = (data.test_images.reshape(200, -1) / 255 - result.scaling.mean) / result.scaling.std
    hidden = np.maximum(x @ w0 + b0, 0)
    out = 1 / (1 + np.exp(-(hidden @ w1 + b1)))
    want = np.argmax(out, axis=1)
    assert np.mean(want == data.test_labels) > 0.5  # it learned something: the check means much
    np.testing.assert_array_equal(result.test_predictions, want)


def test_parity_with_dropout_and_augmentation(other_backend: backends.Backend) -> None:
    data = make_dataset(n_train=200, shape=(6, 6), classes=4)
    cfg = Config.from_dict({
        "layers": [{"nodes": 36, "activation": "relu", "dropout": 0.1},
                   {"nodes": 16, "activation": "softmax", "dropout": 0.3}, {"nodes": 4}],
        "learning_rate": 0.01, "momentum": 0.9, "batch_size": 16, "epochs": 2,
        "dtype": "float64", "augment": {"shift": 1}, "validation_split": 0.1})
    skip_if_numpys_step(other_backend, cfg)
    ref, got = train(cfg, data, "numpy"), train(cfg, data, other_backend)
    for r, g in zip(ref.params, got.params, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


# --- augmentation ------------------------------------------------------------------------------

def test_shifted_images_are_shifts_of_the_originals(backend: backends.Backend) -> None:
    rng = np.random.default_rng(2)
    images = rng.random((12, 5, 7))
    xp = backend.xp
    shifter = Shifter(xp, backend.asarray, (5, 7), 2, -9.0, xp.float64)
    ids = shifter.draw(np.random.default_rng(3), 12)  # as the training loop does
    shifter.use(ids)
    idx = np.array([3, 0, 11, 5])
    got = backend.to_numpy(shifter(backend.asarray(images[idx].reshape(4, -1)),
                                   backend.asarray(idx)))
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    for row, i in enumerate(idx):
        dy, dx = shifts[ids[i]]
        want = np.full((5, 7), -9.0)  # the background where nothing shifts in
        src = images[i][max(0, -dy):5 - max(0, dy), max(0, -dx):7 - max(0, dx)]
        want[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
        np.testing.assert_array_equal(got[row].reshape(5, 7), want)


def test_shift_table_has_the_identity_in_the_middle() -> None:
    table = shift_table(4, 4, 1)
    assert table.shape == (9, 16)
    np.testing.assert_array_equal(table[4], np.arange(16))


def test_same_seed_gives_the_same_augmented_training() -> None:
    data = make_dataset(n_train=120, shape=(6, 6), classes=4)
    cfg = Config.from_dict({
        "layers": [{"nodes": 36, "activation": "relu"}, {"nodes": 8, "activation": "softmax"},
                   {"nodes": 4}], "learning_rate": 0.01, "batch_size": 8, "epochs": 2,
        "augment": {"shift": 2}})
    a, b = train(cfg, data, "numpy"), train(cfg, data, "numpy")
    plain = train(cfg.replace(augment={"shift": 0}), data, "numpy")
    assert all(np.array_equal(x, y) for x, y in zip(a.params, b.params, strict=True))
    assert not np.array_equal(a.params[0], plain.params[0])


# --- validation split and early stopping -------------------------------------------------------

def test_early_stopping_restores_the_best_epoch() -> None:
    import dataclasses

    from trainer.data.dataset import InputScaling, split

    data = make_dataset(n_train=300, shape=(6, 6), classes=4, seed=4)
    rng = np.random.default_rng(0)  # 45% noisy labels: validation accuracy goes up and down
    labels = data.train_labels.copy()
    flip = rng.random(300) < 0.45
    labels[flip] = rng.integers(0, 4, int(flip.sum()))
    data = dataclasses.replace(data, train_labels=labels)
    cfg = Config.from_dict({
        "layers": [{"nodes": 36, "activation": "sigmoid"}, {"nodes": 8, "activation": "softmax"},
                   {"nodes": 4}], "learning_rate": 0.5, "batch_size": 10, "epochs": 30,
        "validation_split": 0.3, "early_stopping_patience": 3, "seed": 1})
    result = train(cfg, data, "numpy")
    vals = [h.val_accuracy for h in result.history]
    best = int(np.argmax(vals)) + 1
    assert result.stopped_early and len(vals) - best == 3 and result.best_epoch == best
    assert vals[-1] != vals[best - 1]  # the last epoch's weights would score differently
    # the kept weights are the best epoch's: evaluating them gives its validation accuracy
    _, _, _, split_rng = np.random.default_rng(cfg.seed).spawn(4)
    _, val_idx = split(cfg, 300, split_rng)
    x = InputScaling.fit(data.train_images).apply(data.train_images[val_idx], np.float32)
    pred = predict(result.params, cfg.activations, x)
    assert np.mean(pred == data.train_labels[val_idx]) == pytest.approx(vals[best - 1])
    assert all(h.test_accuracy is None for h in result.history)  # the test set waits


def test_validation_images_are_never_trained_on() -> None:
    data = make_dataset(n_train=100, shape=(4, 5), classes=4)
    cfg = recipe_config(layers=[{"nodes": 20, "activation": "softmax"}, {"nodes": 4}],
                 validation_split=25.0)
    _, _, _, split_rng = np.random.default_rng(cfg.seed).spawn(4)
    from trainer.data.dataset import split

    train_idx, val_idx = split(cfg, 100, split_rng)
    assert len(val_idx) == 25 and len(train_idx) == 75
    assert not set(train_idx) & set(val_idx)
    assert train(cfg, data, "numpy").train_samples == 75


@pytest.mark.parametrize(("changes", "message"), [
    ({"layers": LAYERS[:2] + [{"nodes": 3, "dropout": 0.5}]}, "layers[2].dropout must be 0"),
    ({"layers": [{"nodes": 6, "activation": "tanh", "dropout": 1.0}] + LAYERS[1:]},
     "layers[0].dropout must be less than 1"),
    ({"optimizer": "rmsprop"}, "optimizer must be 'sgd', 'adam' or 'adamw'"),
    ({"lr_schedule": {"type": "linear"}}, "lr_schedule.type must be"),
    ({"lr_schedule": {"type": "step", "gamma": 2.0}}, "lr_schedule.gamma must be less than"),
    ({"augment": {"shift": 9}}, "augment.shift must be less than or equal to 4"),
    ({"early_stopping_patience": 3}, "early_stopping_patience needs a validation_split"),
    ({"validation_split": 2.5}, "validation_split must be a share below 1 or a whole number"),
])
def test_bad_recipe_keys_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        recipe_config(**changes)


def test_validation_split_larger_than_the_data_is_refused() -> None:
    with pytest.raises(ConfigError, match="leaves no training images"):
        train(recipe_config(layers=[{"nodes": 20, "activation": "softmax"}, {"nodes": 4}],
                     validation_split=500.0), make_dataset(n_train=100), "numpy")


# --- evaluation, the validation split and the best weights, each on its own -------------------

SMALL = [{"nodes": 20, "activation": "tanh"}, {"nodes": 16, "activation": "relu"},
         {"nodes": 8, "activation": "softmax"}, {"nodes": 4}]  # make_dataset's 4x5 images


def _numpy_predictions(params: list[np.ndarray], scaling, images: np.ndarray) -> np.ndarray:
    """An independent forward pass of a tanh-relu-softmax network, no dropout anywhere."""
    a = scaling.apply(images, dtype="float64").reshape(len(images), -1)
    a = np.tanh(a @ params[0] + params[1])
    a = np.maximum(a @ params[2] + params[3], 0.0)
    return (a @ params[4] + params[5]).argmax(axis=1)


def test_evaluation_never_masks_with_dropout() -> None:
    """Heavy dropout on every layer trains; the figures of the trained network (every epoch's
    test accuracy and the final test predictions) are those of the whole network, unmasked."""
    cfg = recipe_config(epochs=3, batch_size=16, layers=[
        {"nodes": 20, "activation": "tanh", "dropout": 0.5},
        {"nodes": 16, "activation": "relu", "dropout": 0.5},
        {"nodes": 8, "activation": "softmax", "dropout": 0.5}, {"nodes": 4}])
    data = make_dataset(n_train=400, n_test=200, shape=(4, 5), classes=4, seed=1)
    result = train(cfg, data, "numpy")
    want = _numpy_predictions(result.params, result.scaling, data.test_images)
    assert np.array_equal(result.test_predictions, want)
    assert result.test_accuracy == np.mean(want == data.test_labels)
    assert result.history[-1].test_accuracy == result.test_accuracy  # the last epoch's too


def test_the_validation_split_comes_from_the_training_images() -> None:
    """The test set's labels are noise (chance is 25%): a validation split taken from it would
    score at chance; taken from the training images it scores as training does."""
    data = make_dataset(n_train=400, n_test=200, shape=(4, 5), classes=4, seed=2)
    noise = np.random.default_rng(0).integers(0, 4, 200).astype(np.uint8)
    data = type(data)(train_images=data.train_images, train_labels=data.train_labels,
                      test_images=data.test_images, test_labels=noise, num_classes=4,
                      source="synthetic")
    result = train(recipe_config(layers=SMALL, epochs=4, batch_size=16, validation_split=0.25),
                   data, "numpy")
    assert (result.train_samples, result.validation_samples) == (300, 100)
    assert result.history[-1].val_accuracy > 0.8 > 0.5 > result.test_accuracy


def test_the_best_epochs_weights_are_put_back() -> None:
    """restore_best_weights: the final weights are the checkpoint's after the best epoch, which
    here is not the last (a learning rate high enough to wander)."""
    states: list = []
    cfg = recipe_config(layers=SMALL, epochs=6, batch_size=16, learning_rate=0.02, momentum=0.9,
                 validation_split=0.25, restore_best_weights=True)
    data = make_dataset(n_train=400, n_test=200, shape=(4, 5), classes=4, seed=3, boost=40)

    result = train(cfg, data, "numpy", callbacks=Callbacks(checkpoint=states.append))
    best = result.best_epoch
    accuracies = [h.val_accuracy for h in result.history]
    assert best is not None and best < cfg.epochs  # else this proves nothing
    assert accuracies[best - 1] == max(accuracies)
    kept = states[best - 1].params  # the state written at the end of the best epoch
    for a, b in zip(result.params, kept, strict=True):
        assert np.array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(result.params, states[-1].params,
                                                        strict=True))
