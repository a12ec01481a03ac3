"""The same network, hyper-parameters and data in other libraries, for `trainer bench --peers`.

Each function trains the config's network for `epochs` epochs on (x, y) and returns the seconds
of each epoch. Gradients are summed over the batch like neural-net-rs (or, for scikit-learn,
which averages, the learning rate is multiplied by the batch size to take the same step).
These libraries are optional: nothing here is imported unless the peer is asked for.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np

from trainer.core.config import Config

Peer = Callable[[Config, np.ndarray, np.ndarray, int], list[float]]
TORCH_ACT = {"sigmoid": "Sigmoid", "relu": "ReLU", "tanh": "Tanh", "identity": "Identity"}
SKLEARN_ACT = {"sigmoid": "logistic", "relu": "relu", "tanh": "tanh", "identity": "identity"}


def _hidden(config: Config) -> list[str]:
    """The hidden activations; every peer here needs the fused softmax + cross-entropy output."""
    acts = config.activations
    if acts[-1] != "softmax" or config.loss != "cross_entropy" or len(set(acts[:-1])) > 1:
        raise ValueError("peers support one hidden activation and a softmax/cross-entropy output")
    return acts[:-1]


def torch_eager(config: Config, x: np.ndarray, y: np.ndarray, epochs: int) -> list[float]:
    import torch

    torch.manual_seed(config.seed)
    layers: list[torch.nn.Module] = []
    for i, act in enumerate(_hidden(config)):
        layers += [torch.nn.Linear(config.sizes[i], config.sizes[i + 1]),
                   getattr(torch.nn, TORCH_ACT[act])()]
    layers.append(torch.nn.Linear(config.sizes[-2], config.sizes[-1]))
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    gen, bs, times = torch.Generator().manual_seed(config.seed), config.batch_size, []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(xt), bs):
            idx = perm[s:s + bs]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def sklearn_sgd(config: Config, x: np.ndarray, y: np.ndarray, epochs: int) -> list[float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    act = {SKLEARN_ACT[a] for a in _hidden(config)}.pop()
    model = MLPClassifier(hidden_layer_sizes=tuple(config.sizes[1:-1]), activation=act,
                          solver="sgd", batch_size=config.batch_size, alpha=0.0,
                          learning_rate_init=config.learning_rate * config.batch_size,
                          momentum=config.momentum, nesterovs_momentum=False, max_iter=1,
                          shuffle=True, random_state=config.seed, warm_start=True, tol=0.0)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        times.append(time.perf_counter() - t0)
    return times


def _jax_setup(config: Config, x: np.ndarray, y: np.ndarray):
    import jax
    import jax.numpy as jnp

    acts = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh,
            "identity": lambda z: z}
    hidden = [acts[a] for a in _hidden(config)]
    rng = np.random.default_rng(config.seed)
    params = []
    for fan_in, fan_out in zip(config.sizes[:-1], config.sizes[1:], strict=True):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        params.append((jnp.asarray(rng.uniform(-limit, limit, (fan_in, fan_out)), jnp.float32),
                       jnp.zeros(fan_out, jnp.float32)))

    def loss(p, xb, yb):
        h = xb
        for (w, b), f in zip(p[:-1], hidden, strict=True):
            h = f(h @ w + b)
        logits = h @ p[-1][0] + p[-1][1]
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

    lr, m = config.learning_rate, config.momentum

    def step(state, batch):
        p, v = state
        g = jax.grad(loss)(p, *batch)
        v = jax.tree_util.tree_map(lambda vi, gi: m * vi - lr * gi, v, g)
        return (jax.tree_util.tree_map(lambda pi, vi: pi + vi, p, v), v), None

    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
    return jax, jnp, step, (params, velocity), jnp.asarray(x), jnp.asarray(y.astype(np.int32))


def jax_step(config: Config, x: np.ndarray, y: np.ndarray, epochs: int) -> list[float]:
    """One jitted step per batch (the gather inside it), called from a Python loop."""
    jax, jnp, step, state, xj, yj = _jax_setup(config, x, y)
    jstep = jax.jit(lambda s, idx: step(s, (xj[idx], yj[idx]))[0])
    rng, bs, times = np.random.default_rng(config.seed), config.batch_size, []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = rng.permutation(len(x)).astype(np.int32)  # host indices: one dispatch per step
        for s in range(0, len(x), bs):
            state = jstep(state, perm[s:s + bs])
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return times


def jax_scan(config: Config, x: np.ndarray, y: np.ndarray, epochs: int) -> list[float]:
    """A whole epoch as one jitted `lax.scan` over the batches (the last partial batch dropped)."""
    jax, jnp, step, state, xj, yj = _jax_setup(config, x, y)
    bs = config.batch_size
    steps = len(x) // bs

    @jax.jit
    def epoch(state, perm):
        idx = perm[:steps * bs].reshape(steps, bs)
        return jax.lax.scan(step, state, (xj[idx], yj[idx]))[0]

    rng, times = np.random.default_rng(config.seed), []
    for _ in range(epochs):
        t0 = time.perf_counter()
        state = epoch(state, jnp.asarray(rng.permutation(len(x))))
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return times


def gemm_floor(config: Config, x: np.ndarray, y: np.ndarray, epochs: int) -> list[float]:
    """Only the GEMMs of forward and backward at their real shapes, in NumPy: a lower bound."""
    rng, bs, n = np.random.default_rng(0), config.batch_size, len(x)
    ws = [rng.random((a, b), dtype=np.float32) for a, b in zip(config.sizes[:-1],
                                                               config.sizes[1:], strict=True)]
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for s in range(0, n, bs):
            outs = [x[s:s + bs]]
            for w in ws:
                outs.append(outs[-1] @ w)
            delta = outs[-1]
            for i in range(len(ws) - 1, -1, -1):
                _ = outs[i].T @ delta
                if i > 0:
                    delta = delta @ ws[i].T
        times.append(time.perf_counter() - t0)
    return times


PEERS: dict[str, tuple[str, Peer]] = {
    "torch": ("torch", torch_eager),
    "sklearn": ("sklearn", sklearn_sgd),
    "jax-step": ("jax", jax_step),
    "jax-scan": ("jax", jax_scan),
    "gemm-floor": ("numpy", gemm_floor),
}
