"""Backward passes against float64 central differences, for every activation and loss."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.activations import ACTIVATIONS
from trainer.losses import loss_and_delta
from trainer.network import backward, forward

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


def penalty_gradient(w: np.ndarray, kind: str | None, rate: float) -> np.ndarray:
    """neural-net-rs's penalty gradients, as trainer/step.py adds them to weight gradients."""
    if kind == "L2":
        return rate * w
    return rate * np.sign(w) if kind == "L1" else np.zeros_like(w)


def _analytic_grads(params, acts, loss, x, target, reg=(None, 0.0)):
    outs, logits = forward(params, acts, x)
    _, delta = loss_and_delta(loss, acts[-1], logits, outs[-1], target)
    grads = backward(params, acts, outs, delta)
    for i in range(0, len(grads), 2):
        grads[i] = grads[i] + penalty_gradient(params[i], *reg)
    return grads


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


@pytest.mark.parametrize("reg", [("L1", 0.01), ("L2", 0.05)])
def test_regularization_gradient_is_the_penalty_derivative(reg: tuple[str, float]) -> None:
    params, x, target = _problem(1)
    acts = ["tanh", "sigmoid", "softmax"]
    analytic = _analytic_grads(params, acts, "cross_entropy", x, target, reg)
    numeric = _numeric_grads(params, acts, "cross_entropy", x, target, reg)
    for a, n in zip(analytic, numeric, strict=True):
        assert _rel_error(a, n) < 1e-6
