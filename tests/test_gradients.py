"""Backward passes against float64 central differences, for every activation and loss, and the
training step's L1/L2 gradients against those of the penalized loss."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import backends
from trainer.core.activations import ACTIVATIONS
from trainer.core.config import Config
from trainer.core.losses import loss_and_delta
from trainer.core.network import backward, forward
from trainer.core.step import flat as step_module
from trainer.core.step import make_step

HIDDEN = list(ACTIVATIONS)
CASES = [(h, "softmax", "cross_entropy") for h in HIDDEN] + [
    (h, out, "mse") for h in HIDDEN for out in ACTIVATIONS]


def _problem(seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [5, 4, 4, 3]  # two hidden layers, so deltas flow through a hidden backward twice
    params = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        params += [rng.normal(0, 0.8, (a, b)), rng.normal(0, 0.3, b)]
    x = rng.normal(0, 1, (6, 5))
    target = np.eye(3)[rng.integers(0, 3, 6)]
    return params, x, target


def _loss(params: list[np.ndarray], acts: list[str], loss: str, x: np.ndarray,
          target: np.ndarray, reg: tuple[str | None, float] = (None, 0.0)) -> float:
    outs, logits = forward(params, acts, x)
    value, _ = loss_and_delta(loss, acts[-1], logits, outs[-1], target)
    kind, rate = reg
    weights = params[0::2]
    if kind == "L2":
        value += rate / 2 * sum(np.sum(w * w) for w in weights)
    elif kind == "L1":
        value += rate * sum(np.sum(np.abs(w)) for w in weights)
    return float(value)


def _numeric_grads(params, acts, loss, x, target, reg=(None, 0.0), h=1e-6):
    grads = []
    for p in params:
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up = _loss(params, acts, loss, x, target, reg)
            p[i] = old - h
            down = _loss(params, acts, loss, x, target, reg)
            p[i] = old
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def _analytic_grads(params, acts, loss, x, target):
    outs, logits = forward(params, acts, x)
    _, delta = loss_and_delta(loss, acts[-1], logits, outs[-1], target)
    return backward(params, acts, outs, delta)


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-12))


@pytest.mark.parametrize(("hidden", "out", "loss"), CASES)
def test_backward_matches_central_differences(hidden: str, out: str, loss: str) -> None:
    params, x, target = _problem()
    acts = [hidden, hidden, out]
    analytic = _analytic_grads(params, acts, loss, x, target)
    numeric = _numeric_grads(params, acts, loss, x, target)
    for a, n in zip(analytic, numeric, strict=True):
        assert _rel_error(a, n) < 1e-6


def test_backward_with_dropout_masks_matches_central_differences() -> None:
    """Masks are fixed multipliers of each connection's input: the gradient must see them."""
    params, x, target = _problem(2)
    acts = ["relu", "sigmoid", "softmax"]
    rng = np.random.default_rng(7)
    masks = [(rng.random(x.shape) > 0.3) / 0.7, None, (rng.random((6, 4)) > 0.5) / 0.5]

    def loss(ps: list[np.ndarray]) -> float:
        outs, logits = forward(ps, acts, x, masks)
        return float(loss_and_delta("cross_entropy", acts[-1], logits, outs[-1], target)[0])

    outs, logits = forward(params, acts, x, masks)
    _, delta = loss_and_delta("cross_entropy", acts[-1], logits, outs[-1], target)
    analytic = backward(params, acts, outs, delta, masks)
    h = 1e-6
    for p, a in zip(params, analytic, strict=True):
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up = loss(params)
            p[i] = old - h
            numeric[i] = (up - loss(params)) / (2 * h)
            p[i] = old
        assert _rel_error(a, numeric) < 1e-6
    unmasked = backward(params, acts, forward(params, acts, x)[0], delta)
    assert _rel_error(unmasked[0], analytic[0]) > 1e-3  # the masks changed the answer


@pytest.mark.parametrize("acc_min", [0, step_module.GEMM_ACC_MIN], ids=["gemm-acc", "small"])
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "kernels"])
@pytest.mark.parametrize("reg", [("L1", 0.01), ("L2", 0.05)])
def test_the_steps_regularized_gradient_matches_finite_differences(
        reg: tuple[str, float], fast: bool, acc_min: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The product's training step, with momentum 0 and rate 1, moves every parameter by minus
    its gradient: that move must be the central differences of the loss plus the penalty
    (L2: rate/2 * sum w^2, L1: rate * sum |w|, on weights only)."""
    monkeypatch.setattr(step_module, "GEMM_ACC_MIN", acc_min)
    params, x, target = _problem(1)
    acts = ["tanh", "sigmoid", "softmax"]
    cfg = Config.from_dict({
        "layers": [{"nodes": 5, "activation": acts[0]}, {"nodes": 4, "activation": acts[1]},
                   {"nodes": 4, "activation": acts[2]}, {"nodes": 3}],
        "learning_rate": 1.0, "momentum": 0.0, "batch_size": 6, "epochs": 1,
        "dtype": "float64", "regularization_type": reg[0], "regularization_rate": reg[1]})
    be = backends.load("numpy")
    step = make_step(cfg, be.xp, [p.copy() for p in params], [np.zeros_like(p) for p in params],
                     be.kernels if fast else None)
    step(x, np.argmax(target, axis=1), np.arange(6), 1.0)
    moved = [before - after for before, after in zip(params, step.params, strict=True)]
    numeric = _numeric_grads(params, acts, "cross_entropy", x, target, reg)
    for a, n in zip(moved, numeric, strict=True):
        assert _rel_error(a, n) < 1e-6
