"""Independent references the steps are checked against (plain NumPy, float64, written out
here rather than reusing the code under test), and the checks every stretch step (jax's
compiled step, numba's fused one) must pass."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_dataset

from trainer import backends
from trainer.core.config import Config
from trainer.core.dropout import keep_mask, step_key
from trainer.core.losses import loss_and_delta
from trainer.core.network import backward, forward, init_params
from trainer.data.dataset import Dataset
from trainer.run.checkpoint import LoopState, load_checkpoint
from trainer.run.results import Callbacks, DivergedError, Interrupted
from trainer.run.train import train


def penalty_gradient(w: np.ndarray, kind: str | None, rate: float) -> np.ndarray:
    """neural-net-rs's penalty gradients (test_gradients checks the step's against finite
    differences of the penalized loss)."""
    if kind == "L2":
        return rate * w
    return rate * np.sign(w) if kind == "L1" else np.zeros_like(w)


def reference_steps(cfg: Config, params, x, t, batches, lr):
    """What the step must do, written plainly: summed loss, then v = m v - lr g, w += v (or
    Nesterov's w += m v - lr g, or Adam's and AdamW's bias-corrected moments and step).
    Returns the new weights, each step's summed loss and each step's count of rows whose true
    class has the largest output (before the step's update)."""
    params = [p.copy() for p in params]
    velocities = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]  # Adam's (velocities: its first moments)
    losses, hits = [], []
    for step, idx in enumerate(batches):
        # dropout: the masks of (seed, step, layer), from the generic hash
        masks = [keep_mask(np, np.arange(len(idx) * n).reshape(len(idx), n),
                           step_key(cfg.seed, step, i), p, np.float64) if p else None
                 for i, (n, p) in enumerate(zip(cfg.sizes[:-1], cfg.dropouts, strict=False))]
        outs, logits = forward(params, cfg.activations, x[idx], masks)
        loss, delta = loss_and_delta(cfg.loss, cfg.activations[-1], logits, outs[-1], t[idx])
        hits.append(int(np.sum(np.argmax(outs[-1], axis=1) == np.argmax(t[idx], axis=1))))
        if cfg.loss_reduction == "mean":
            delta = delta / len(idx)
        grads = backward(params, cfg.activations, outs, delta, masks)
        for i, (w, v, g) in enumerate(zip(params, velocities, grads, strict=True)):
            if i % 2 == 0:
                g = g + penalty_gradient(w, cfg.regularization_type, cfg.regularization_rate)
            if cfg.optimizer in ("adam", "adamw"):  # bias-corrected moments, then the step
                k = step + 1  # Adam's t
                v[...] = cfg.beta1 * v + (1 - cfg.beta1) * g
                second[i][...] = cfg.beta2 * second[i] + (1 - cfg.beta2) * g * g
                if cfg.optimizer == "adamw":
                    w -= lr * cfg.weight_decay * w
                w -= lr * (v / (1 - cfg.beta1 ** k)) / (
                    np.sqrt(second[i] / (1 - cfg.beta2 ** k)) + cfg.epsilon)
                continue
            v[...] = cfg.momentum * v - lr * g
            w += cfg.momentum * v - lr * g if cfg.nesterov else v
        losses.append(float(loss))
    return params, losses, hits


def adam_reference(cfg: Config, params, x, t, batches, lr):
    from trainer.core.losses import loss_and_delta
    from trainer.core.network import backward

    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for step, idx in enumerate(batches, start=1):
        outs, logits = forward(params, cfg.activations, x[idx])
        _, delta = loss_and_delta(cfg.loss, cfg.activations[-1], logits, outs[-1], t[idx])
        for i, g in enumerate(backward(params, cfg.activations, outs, delta)):
            m[i] = cfg.beta1 * m[i] + (1 - cfg.beta1) * g
            v[i] = cfg.beta2 * v[i] + (1 - cfg.beta2) * g * g
            m_hat, v_hat = m[i] / (1 - cfg.beta1 ** step), v[i] / (1 - cfg.beta2 ** step)
            if cfg.optimizer == "adamw":
                params[i] = params[i] - lr * cfg.weight_decay * params[i]
            params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + cfg.epsilon)
    return params


def numpy_forward_predict(weights: dict, scaling: dict, images: np.ndarray) -> np.ndarray:
    """An independent plain-NumPy forward pass of the saved 784-sigmoid-128-softmax-10 model."""
    x = (images.reshape(len(images), -1) / 255.0 - scaling["mean"]) / scaling["std"]
    h = 1.0 / (1.0 + np.exp(-(x @ weights["layers.0.weight"] + weights["layers.0.bias"])))
    return np.argmax(h @ weights["layers.1.weight"] + weights["layers.1.bias"], axis=1)


# --- the stretch steps' shared checks ----------------------------------------------------------

def check_reference(cfg: Config, make: Callable[[list[np.ndarray]], Any],
                    asarray: Callable[[Any], Any], to_numpy: Callable[[Any], Any]) -> None:
    """A stretch step (CompiledStep, FusedStep) made by `make` from the initial weights, against
    test_step's float64 reference: two full batches in one stretch, then the partial last one
    alone (on jax its own compile)."""
    rng = np.random.default_rng(3)
    x, labels = rng.normal(0, 1, (10, 6)), rng.integers(0, 4, 10)
    perm = np.array([0, 3, 5, 7, 1, 2, 9, 4, 8, 6])  # batches of 4, the last of 2
    batches = [perm[:4], perm[4:8], perm[8:]]
    host = init_params(cfg.sizes, cfg.activations, "xavier", rng, "float64")
    want_params, want_losses, want_hits = reference_steps(cfg, host, x, np.eye(4)[labels],
                                                          batches, cfg.learning_rate)
    step = make(host)
    step.begin_epoch(asarray(x), asarray(labels), asarray(perm), [cfg.learning_rate] * 3, 0,
                     0.0, 0.0)
    assert step.run(0, 2) is None and step.global_step == 2
    loss, correct = step.sums.values()
    assert loss == pytest.approx(sum(want_losses[:2]), rel=1e-12)
    assert correct == sum(want_hits[:2])
    assert step.run(2, 1) is None
    loss, correct = step.sums.values()
    assert loss == pytest.approx(sum(want_losses), rel=1e-12) and step.global_step == 3
    assert correct == sum(want_hits)
    for got, want in zip(step.params, want_params, strict=True):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-11, atol=1e-13)


def check_seeds(be: backends.Backend, cfg: Config, data: Callable[[], Dataset]) -> None:
    """The same seed gives the same bits, another seed other bits."""
    a, b = train(cfg, data(), be), train(cfg, data(), be)
    c = train(cfg.replace(seed=1), data(), be)
    assert all(np.array_equal(x, y) for x, y in zip(a.params, b.params, strict=True))
    assert [h.loss for h in a.history] == [h.loss for h in b.history]
    assert not np.array_equal(a.params[0], c.params[0])


def check_stretches(be: backends.Backend, cfg: Config, data: Callable[[], Dataset]) -> None:
    """Checkpoints every 3 steps cut every epoch of a 2-epoch run into stretches of 3: the same
    bits as whole epochs, and the checkpoints fall on those steps."""
    straight = train(cfg, data(), be)
    states: list[LoopState] = []
    cut = train(cfg, data(), be, callbacks=Callbacks(checkpoint=states.append,
                                                     checkpoint_every=3))
    for a, b in zip(straight.params, cut.params, strict=True):
        assert np.array_equal(a, b)
    assert [h.loss for h in straight.history] == [h.loss for h in cut.history]
    steps = -(-straight.train_samples // cfg.batch_size)
    want = [(e, s) for e in (1, 2) for s in range(1, steps) if (s + (e - 1) * steps) % 3 == 0]
    want = sorted(want + [(2, 0), (3, 0)])
    assert sorted((s.epoch, s.step) for s in states) == want


def check_resume(be: backends.Backend, cfg: Config, data: Callable[[], Dataset],
                 folder: Path) -> None:
    """Stopped mid-epoch 2 (checkpoints every 2 steps) and resumed: bitwise the straight run."""
    from trainer.run.checkpoint import save_checkpoint

    straight = train(cfg, data(), be)
    saved: list[tuple[int, int]] = []

    def checkpoint(state: LoopState) -> None:
        saved.append((state.epoch, state.step))
        save_checkpoint(folder, state)

    def stop_requested() -> int | None:  # asked after every stretch and at every epoch's end
        return signal.SIGINT if any(e == 2 and s > 0 for e, s in saved) else None

    with pytest.raises(Interrupted) as caught:  # after epoch 2's second stretch
        train(cfg, data(), be, callbacks=Callbacks(
            checkpoint=checkpoint, stop_requested=stop_requested, checkpoint_every=2))
    state = load_checkpoint(folder)
    assert (state.epoch, state.step) == (caught.value.epoch, caught.value.step)
    assert state.epoch == 2 and state.step > saved[-2][1] > 0  # the stretch after a checkpoint
    resumed = train(cfg, data(), be, resume=state)
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert np.array_equal(a, b)
    assert [h.loss for h in straight.history] == [h.loss for h in resumed.history]
    assert straight.test_accuracy == resumed.test_accuracy


def check_divergence(be: backends.Backend, dtype: str) -> None:
    """A learning rate that blows up stops at NumPy's step, with NumPy's message."""
    cfg = Config.from_dict({
        "layers": [{"nodes": 20, "activation": "relu"}, {"nodes": 8, "activation": "softmax"},
                   {"nodes": 4}], "learning_rate": 1e6, "batch_size": 10, "epochs": 3,
        "dtype": dtype})
    caught = []
    for backend in ("numpy", be):
        with pytest.raises(DivergedError) as e:
            train(cfg, make_dataset(n_train=200), backend)
        caught.append(e.value)
    assert (caught[1].epoch, caught[1].step) == (caught[0].epoch, caught[0].step)
    assert str(caught[1]) == str(caught[0])
