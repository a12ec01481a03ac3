"""The bench's peers do the config's math: a few steps of the PyTorch and JAX peers from the
project's initial weights against the project's float64 step (and the independent reference),
their dropout where the config puts it, the host augmentation every peer pays, and the
features a peer cannot express said as such."""

from __future__ import annotations

import numpy as np
import pytest
from references import reference_steps

from trainer.core import optim
from trainer.core.config import Config
from trainer.core.network import init_params
from trainer.core.step.reference import train_batch
from trainer.core.step.state import Rates

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

LAYERS = {"tanh/leaky": [{"nodes": 6, "activation": "tanh"},
                         {"nodes": 5, "activation": "leaky_relu"},
                         {"nodes": 4, "activation": "softmax"}, {"nodes": 3}],
          "sigmoid/identity": [{"nodes": 6, "activation": "sigmoid"},
                               {"nodes": 5, "activation": "identity"},
                               {"nodes": 4, "activation": "softmax"}, {"nodes": 3}],
          "relu": [{"nodes": 6, "activation": "relu"}, {"nodes": 5, "activation": "softmax"},
                   {"nodes": 3}]}
# (layers, config keys, a rate per step or one for all): what each case proves
CASES = {
    "nesterov-l2-sum": ("tanh/leaky", {"nesterov": True, "momentum": 0.8,
                                       "regularization_type": "L2",
                                       "regularization_rate": 0.3}, [0.05]),
    "momentum-l1-mean": ("sigmoid/identity", {"momentum": 0.9, "loss_reduction": "mean",
                                              "regularization_type": "L1",
                                              "regularization_rate": 0.2}, [0.3]),
    "adam-l2-mean-rates": ("tanh/leaky", {"optimizer": "adam", "beta1": 0.8, "beta2": 0.99,
                                          "epsilon": 1e-6, "loss_reduction": "mean",
                                          "regularization_type": "L2",
                                          "regularization_rate": 0.5},
                           [0.01, 0.03, 0.02]),
    "adamw-sum": ("relu", {"optimizer": "adamw", "weight_decay": 0.1}, [0.02]),
    "nesterov-mean-rates": ("relu", {"nesterov": True, "momentum": 0.9,
                                     "loss_reduction": "mean"}, [0.1, 0.4, 0.2]),
}
BATCHES = [np.arange(0, 4), np.arange(4, 8), np.arange(8, 10)]  # the last one partial


def case(name: str) -> tuple[Config, list[np.ndarray], np.ndarray, np.ndarray, list[float]]:
    layers, keys, rates = CASES[name]
    cfg = Config.from_dict({"layers": LAYERS[layers], "learning_rate": 0.05, "epochs": 1,
                            "batch_size": 4, "dtype": "float64"} | keys)
    rng = np.random.default_rng(3)
    params = init_params(cfg.sizes, cfg.activations, "xavier", rng, "float64")
    params = [p + rng.normal(0, 0.1, p.shape) for p in params]  # biases not zero
    x, y = rng.normal(size=(10, 6)), rng.integers(0, cfg.sizes[-1], 10)
    return cfg, params, x, y, (rates * 3)[:3]


def project_steps(cfg: Config, params: list[np.ndarray], x: np.ndarray, y: np.ndarray,
                  lrs: list[float]) -> list[np.ndarray]:
    """The project's own step (core/step/reference.train_batch) with the scalars its Step
    works out (state.Step.rates), in float64."""
    adam = cfg.optimizer in ("adam", "adamw")
    state = ([p.copy() for p in params], [np.zeros_like(p) for p in params],
             [np.zeros_like(p) for p in params])
    for t, (idx, lr) in enumerate(zip(BATCHES, lrs, strict=True), start=1):
        scale = (1.0 if adam else -lr) / (len(idx) if cfg.loss_reduction == "mean" else 1)
        rates = Rates(scale, scale * cfg.regularization_rate,
                      optim.adam_rates(lr, t, cfg.beta1, cfg.beta2, cfg.weight_decay
                                       if cfg.optimizer == "adamw" else 0.0) if adam else None)
        state = train_batch(cfg, state, x[idx], np.eye(cfg.sizes[-1])[y[idx]], None, rates)[0]
    return list(state[0])


def torch_steps(cfg, params, x, y, lrs) -> list[np.ndarray]:
    from trainer.bench.peer_torch import build, make_step, weights

    model, opt = build(cfg, params)
    step = make_step(cfg, model, opt)
    for idx, lr in zip(BATCHES, lrs, strict=True):
        step(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), lr)
    return weights(model)


def jax_steps(cfg, params, x, y, lrs) -> list[np.ndarray]:
    from trainer.bench.peer_jax import build, make_step, weights

    state, step = build(cfg, params), jax.jit(make_step(cfg))
    for idx, lr in zip(BATCHES, lrs, strict=True):
        state = step(state, x[idx], y[idx], np.float64(lr))
    return weights(state)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("peer", ["torch", "jax"])
def test_a_peers_steps_are_the_projects(peer: str, name: str) -> None:
    cfg, params, x, y, lrs = case(name)
    if peer == "torch" and cfg.optimizer == "sgd" and cfg.momentum and len(set(lrs)) > 1:
        pytest.skip("torch.optim's momentum keeps raw gradients: with a changing rate it is "
                    "another convention (peers.py says so)")
    want = project_steps(cfg, params, x, y, lrs)
    got = (torch_steps if peer == "torch" else jax_steps)(cfg, params, x, y, lrs)
    for w, g, p in zip(want, got, params, strict=True):
        assert not np.allclose(w, p)  # the steps moved every array
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


def test_the_project_step_here_is_the_independent_reference() -> None:
    """project_steps (how the tests above read the project's step) against tests/references'
    plain NumPy steps, on a case both cover: a summed loss, Nesterov, L2, one rate."""
    cfg, params, x, y, lrs = case("nesterov-l2-sum")
    want = reference_steps(cfg, params, x, np.eye(3)[y], BATCHES, lrs[0])[0]
    for w, g in zip(want, project_steps(cfg, params, x, y, lrs), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
    torch_got = torch_steps(cfg, params, x, y, lrs)
    for w, g in zip(want, torch_got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)
