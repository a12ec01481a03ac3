"""The JAX peers: a jitted step per batch, and a whole epoch as one `lax.scan` (see peers.py).

`build` makes the state from given initial weights and `make_step` the pure step function
(state, x, y, lr) -> state, so that a test can run a step and compare it with the project's
math. The update is written out (no optax) with the project's sign convention (optim.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer.bench.peer_feed import Feed, initial_params
from trainer.bench.peers import PeerRun
from trainer.core.activations import LEAKY_SLOPE
from trainer.core.config import Config

jax.config.update("jax_enable_x64", True)  # float64 configs (as the jax backend does)
ACTIVATION: dict[str, Callable[[Any], Any]] = {
    "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
    "leaky_relu": lambda z: jax.nn.leaky_relu(z, LEAKY_SLOPE), "identity": lambda z: z}
# (weights [(W, b), ...], velocities or Adam's first moments, second moments, dropout key,
#  steps taken, the epoch's summed loss so far)
State = tuple[Any, Any, Any, Any, Any, Any]


def build(config: Config, params: Sequence[np.ndarray]) -> State:
    dtype = jnp.dtype(config.dtype)
    weights = [(jnp.asarray(params[i], dtype), jnp.asarray(params[i + 1], dtype))
               for i in range(0, len(params), 2)]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, weights)
    second = zeros if config.optimizer in ("adam", "adamw") else ()
    return (weights, zeros, second, jax.random.key(config.seed), jnp.zeros((), dtype),
            jnp.zeros((), dtype))


def forward(config: Config, weights: Any, x: Any, key: Any = None) -> tuple[Any, list[Any]]:
    """(logits, the input of each connection): dropout (jax.random, inverted) on the inputs
    the config drops when a key is given."""
    acts, inputs, h = config.activations, [], x
    for i, (w, b) in enumerate(weights):
        p = config.dropouts[i]
        if p and key is not None:
            key, sub = jax.random.split(key)
            h = jnp.where(jax.random.bernoulli(sub, 1.0 - p, h.shape), h / (1.0 - p), 0.0)
        inputs.append(h)
        z = h @ w + b
        h = ACTIVATION[acts[i]](z) if i < len(acts) - 1 else z
    return h, inputs


def make_step(config: Config) -> Callable[..., State]:
    c, dropping = config, any(config.dropouts)
    adam, m = config.optimizer in ("adam", "adamw"), config.momentum
    tree = jax.tree_util.tree_map

    def loss(weights: Any, x: Any, y: Any, key: Any) -> tuple[Any, Any]:
        logits = forward(c, weights, x, key)[0]
        ce = -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
        total = ce
        if c.regularization_type and c.regularization_rate:
            ws = [w for w, _ in weights]
            total = total + c.regularization_rate * (
                sum(0.5 * jnp.sum(w * w) for w in ws) if c.regularization_type == "L2"
                else sum(jnp.sum(jnp.abs(w)) for w in ws))
        return (total / x.shape[0] if c.loss_reduction == "mean" else total), ce

    grad = jax.value_and_grad(loss, has_aux=True)

    def step(state: State, x: Any, y: Any, lr: Any) -> State:
        weights, first, second, key, t, loss_sum = state
        key, sub = jax.random.split(key) if dropping else (key, None)
        (_, ce), g = grad(weights, x, y, sub)
        t = t + 1
        if not adam:  # v = m v - lr g; w += v (Nesterov: w += m v - lr g)
            g = tree(lambda gi: -lr * gi, g)
            first = tree(lambda vi, gi: m * vi + gi, first, g)
            step_of = (lambda vi, gi: m * vi + gi) if c.nesterov else (lambda vi, gi: vi)
            weights = tree(lambda wi, vi, gi: wi + step_of(vi, gi), weights, first, g)
        else:
            first = tree(lambda mi, gi: c.beta1 * mi + (1 - c.beta1) * gi, first, g)
            second = tree(lambda si, gi: c.beta2 * si + (1 - c.beta2) * gi * gi, second, g)
            size, bias2 = lr / (1 - c.beta1 ** t), 1 - c.beta2 ** t
            if c.optimizer == "adamw":
                weights = tree(lambda wi: wi * (1 - lr * c.weight_decay), weights)
            weights = tree(lambda wi, mi, si: wi - size * mi / (jnp.sqrt(si / bias2) + c.epsilon),
                           weights, first, second)
        return weights, first, second, key, t, loss_sum + ce
    return step


def weights(state: State) -> list[np.ndarray]:
    return [np.asarray(a) for pair in state[0] for a in pair]


def _setup(config: Config, feed: Feed) -> tuple[Callable[..., State], State, Any]:
    dtype = jnp.dtype(config.dtype)
    return make_step(config), build(config, initial_params(config)), dtype


def _restart(state: State) -> State:
    return (*state[:5], jnp.zeros_like(state[5]))


def jax_step(config: Config, feed: Feed, epochs: int) -> PeerRun:
    """One jitted step per batch, called from a Python loop: without augmentation the batch is
    gathered inside it from the data on the device, with it the host's batch is handed in."""
    step, state, dtype = _setup(config, feed)
    xj, yj = jnp.asarray(feed.x), jnp.asarray(feed.y)
    by_index = jax.jit(lambda s, idx, lr: step(s, xj[idx], yj[idx], lr))
    by_batch = jax.jit(step)
    times, loss = [], None
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        state = _restart(state)
        if feed.augment is None:
            perm = feed.begin(epoch).astype(np.int32)
            for s in range(feed.steps):
                state = by_index(state, perm[s * feed.size:(s + 1) * feed.size],
                                 np.asarray(feed.lrs[s], dtype))
        else:
            for x, y, lr in feed.epoch(epoch):
                state = by_batch(state, x, y, np.asarray(lr, dtype))
        loss = float(state[5]) / feed.n  # waits for the epoch's work
        times.append(time.perf_counter() - t0)
    return PeerRun(times, loss)


def jax_scan(config: Config, feed: Feed, epochs: int) -> PeerRun:
    """The epoch's full batches as one jitted `lax.scan` (gathered inside it, or augmented on
    the host first and handed in), then the last, partial batch by the jitted step."""
    step, state, dtype = _setup(config, feed)
    xj, yj = jnp.asarray(feed.x), jnp.asarray(feed.y)
    full, size = feed.full, feed.size

    def scan(state: State, xs: Any, ys: Any, lrs: Any) -> State:
        return jax.lax.scan(lambda s, b: (step(s, *b), None), state, (xs, ys, lrs))[0]

    by_index = jax.jit(lambda s, perm, lrs: scan(s, xj[perm[:full * size].reshape(full, size)],
                                                 yj[perm[:full * size].reshape(full, size)],
                                                 lrs))
    by_batch, last = jax.jit(scan), jax.jit(step)
    times, loss = [], None
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        state = _restart(state)
        perm = feed.begin(epoch)
        lrs = np.asarray(feed.lrs, dtype)
        if feed.augment is None:
            state = by_index(state, perm.astype(np.int32), lrs[:full])
        else:
            xs = np.empty((full, size, feed.x.shape[1]), feed.x.dtype)
            for s in range(full):
                xs[s] = feed.batch(s)[0]
            ys = feed.y[perm[:full * size]].reshape(full, size)
            state = by_batch(state, xs, ys, lrs[:full])
        if full < feed.steps:
            state = last(state, *feed.batch(full), lrs[full])
        loss = float(state[5]) / feed.n
        times.append(time.perf_counter() - t0)
    return PeerRun(times, loss)
