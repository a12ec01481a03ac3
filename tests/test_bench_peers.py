"""The bench's peers do the config's math: a few steps of the PyTorch and JAX peers from the
project's initial weights against the project's float64 step (and the independent reference),
their dropout where the config puts it, the host augmentation every peer pays, and the
features a peer cannot express said as such."""

from __future__ import annotations

from pathlib import Path

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


# torch.optim's momentum keeps raw gradients: with a changing rate it is another convention
# (peers.py says so), so torch is held to the project's steps at a constant rate only
PAIRS = [(peer, name) for peer in ("torch", "jax") for name in CASES
         if not (peer == "torch" and name == "nesterov-mean-rates")]


@pytest.mark.parametrize(("peer", "name"), PAIRS)
def test_a_peers_steps_are_the_projects(peer: str, name: str) -> None:
    cfg, params, x, y, lrs = case(name)
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


DROPPED = [{"nodes": 40, "activation": "sigmoid", "dropout": 0.3},
           {"nodes": 30, "activation": "tanh"},
           {"nodes": 20, "activation": "softmax", "dropout": 0.5}, {"nodes": 4}]


def dropout_config() -> Config:
    return Config.from_dict({"layers": DROPPED, "learning_rate": 0.1, "epochs": 1,
                             "batch_size": 400, "dtype": "float64"})


def check_dropped(before: np.ndarray, after: np.ndarray, p: float) -> None:
    """`after` is `before` with a share p of its elements zeroed and the rest over 1 - p."""
    assert np.all(before != 0)  # (sigmoid, tanh of random inputs, positive x: never 0)
    ratio = after / before
    dropped = ratio == 0
    np.testing.assert_allclose(ratio[~dropped], 1 / (1 - p), rtol=1e-12)
    sigma = np.sqrt(p * (1 - p) / ratio.size)
    assert abs(dropped.mean() - p) < 5 * sigma, (dropped.mean(), p)


def test_torch_drops_the_inputs_the_config_drops() -> None:
    """Each Linear's input against what fed it (x, the activation before): a share p zeroed,
    the rest scaled by 1/(1-p); none dropped where the config drops nothing."""
    from trainer.bench.peer_torch import build

    cfg = dropout_config()
    model, _ = build(cfg, init_params(cfg.sizes, cfg.activations, "xavier",
                                      np.random.default_rng(0), "float64"))
    inputs: list[np.ndarray] = []  # each Linear's input
    fed: list[np.ndarray] = []  # each activation's output: what feeds the next connection
    for module in model:
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(
                lambda m, args: inputs.append(args[0].detach().numpy().copy()))
        elif not isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(
                lambda m, args, out: fed.append(out.detach().numpy().copy()))
    x = np.random.default_rng(1).uniform(0.5, 1.5, (400, 40))
    model.train()
    model(torch.from_numpy(x))
    fed.insert(0, x)
    assert len(inputs) == len(fed) == 3
    for i, p in enumerate(cfg.dropouts[:3]):
        if p:
            check_dropped(fed[i], inputs[i], p)
        else:
            np.testing.assert_array_equal(inputs[i], fed[i])


def test_jax_drops_the_inputs_the_config_drops() -> None:
    from trainer.bench.peer_jax import ACTIVATION, build, forward

    cfg = dropout_config()
    state = build(cfg, init_params(cfg.sizes, cfg.activations, "xavier",
                                   np.random.default_rng(0), "float64"))
    x = np.random.default_rng(1).uniform(0.5, 1.5, (400, 40))
    inputs = [np.asarray(a) for a in forward(cfg, state[0], x, jax.random.key(5))[1]]
    for i, p in enumerate(cfg.dropouts[:3]):
        w, b = state[0][i - 1] if i else (None, None)
        before = x if i == 0 else np.asarray(ACTIVATION[cfg.activations[i - 1]](
            inputs[i - 1] @ w + b))
        if p:
            check_dropped(before, inputs[i], p)
        else:
            np.testing.assert_array_equal(inputs[i], before)
    no_key = forward(cfg, state[0], x)[1]  # no key: no dropout (what a test step uses)
    np.testing.assert_array_equal(np.asarray(no_key[0]), x)


def feed_config(**changes) -> Config:
    """A 36-12-3 network on 6x6 images, warped and shifted, Adam on a cosine schedule."""
    return Config.from_dict({
        "layers": [{"nodes": 36, "activation": "relu"}, {"nodes": 12, "activation": "softmax"},
                   {"nodes": 3}],
        "learning_rate": 0.01, "epochs": 2, "batch_size": 16, "optimizer": "adam",
        "lr_schedule": {"type": "cosine", "warmup_epochs": 0.5},
        "augment": {"shift": 1, "elastic_alpha": 8.0, "elastic_sigma": 1.5}} | changes)


def make_feed(cfg: Config, n: int = 70):
    from trainer.bench.peer_feed import Feed

    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, 36)).astype(cfg.dtype)
    return Feed(cfg, x, rng.integers(0, 3, n), (6, 6), -0.5)


def test_the_feed_warps_then_shifts_each_batch_as_a_run_does() -> None:
    """A batch from the feed against the project's augmentation in plain array-API code
    (ElasticWarp without the numpy kernel, then Shifter), with the epoch's shifts; and the
    schedule's rate per step."""
    from array_api_compat import numpy as xp

    from trainer.core.augment import Shifter
    from trainer.core.elastic import ElasticWarp
    from trainer.core.schedule import learning_rate

    cfg = feed_config()
    feed = make_feed(cfg)
    perm = feed.begin(2)
    got, labels = feed.batch(1)
    idx = perm[16:32]
    warp = ElasticWarp(xp, np.asarray, (6, 6), alpha=8.0, sigma=1.5, rotate=0.0, scale=0.0,
                       background=-0.5, seed=cfg.seed, dtype=np.float32)
    warp.use(2)
    shifter = Shifter(xp, np.asarray, (6, 6), 1, -0.5, np.float32)
    shifter.use(np.asarray(feed.shifter.shifts))
    want = shifter(warp(feed.x[idx], idx), idx)
    assert not np.allclose(want, feed.x[idx])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, feed.y[idx])
    assert feed.steps == 5 and len(feed.lrs) == 5  # 70 rows: four of 16 and one of 6
    assert feed.lrs == [learning_rate(cfg, 2, s, 5) for s in range(5)]
    assert len(set(feed.lrs)) == 5
    seen, real = [], feed.augment  # augmented on one of NumPy's BLAS threads, then restored
    feed.augment = lambda x, idx: (seen.append([lib.num_threads for lib in feed.blas]),
                                   real(x, idx))[1]
    before = [lib.num_threads for lib in feed.blas]
    feed.batch(0)
    assert feed.blas and seen == [[1] * len(feed.blas)]
    assert [lib.num_threads for lib in feed.blas] == before


@pytest.mark.parametrize("augment", [True, False], ids=["augmented", "plain"])
def test_torch_and_jax_peers_train_the_same_run(augment: bool) -> None:
    """Whole peers on one feed (no dropout): from the same weights, in the same order, on the
    same augmented batches with the same rates, the last partial batch included, the three
    report the same loss; without the partial batch it would differ."""
    from trainer.bench.peer_jax import jax_scan, jax_step
    from trainer.bench.peer_torch import eager

    cfg = feed_config(**({} if augment else {"augment": {}}))
    runs = {peer.__name__: peer(cfg, make_feed(cfg), 2) for peer in (eager, jax_step, jax_scan)}
    losses = [run.loss for run in runs.values()]
    assert all(len(run.times) == 2 and min(run.times) > 0 for run in runs.values())
    assert 0.1 < losses[0] < 3 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert losses[1] == pytest.approx(losses[2], rel=1e-4)


def test_what_each_peer_cannot_express() -> None:
    from trainer.bench.peers import PEERS, cannot_express

    recipe = Config.from_file(Path(__file__).parent.parent / "configs" / "mnist-99.3.json")
    assert {name: cannot_express(name, recipe) for name in PEERS} == {
        "torch": None, "torch-compile": None, "jax-step": None, "jax-scan": None,
        "gemm-floor": None,
        "sklearn": "dropout; a cosine schedule with warm-up; augmentation (fit takes a fixed "
                   "training set)"}
    mixed = recipe.replace(layers=[{"nodes": 784, "activation": "leaky_relu"},
                                   {"nodes": 20, "activation": "softmax"},
                                   {"nodes": 10, "activation": "softmax"}, {"nodes": 10}],
                           optimizer="adamw", regularization_type="L1",
                           regularization_rate=0.1, augment={}, lr_schedule={})
    assert cannot_express("torch", mixed) == "hidden activation softmax"
    assert cannot_express("sklearn", mixed) == (
        "hidden activation leaky_relu, softmax; a different activation per hidden layer; "
        "an L1 penalty; AdamW")
    assert cannot_express("gemm-floor", mixed) is None


def test_a_peer_that_fails_says_why_in_one_line(mnist, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile failing inside the worker (no C++ compiler, say): the worker reports the
    exception's type and first line, which the row shows, not the traceback's last hint."""
    from trainer.bench.run import worker
    from trainer.core.config import default_config

    def broken(*args, **kwargs):
        raise RuntimeError("CppCompileError: C++ compile error\n(the compiler's log)\n")

    monkeypatch.setattr(torch, "compile", broken)
    spec = {"config": default_config().to_dict(), "batch_size": 100, "epochs": 1,
            "warmup": 0, "limit_train": 200, "target": "peer:torch-compile"}
    assert worker(spec) == {"error": "RuntimeError: CppCompileError: C++ compile error"}
    result = worker(spec | {"target": "peer:torch"})  # eager: trains
    assert len(result["times"]) == 1 and result["train_samples"] == 200
    assert 0 < result["loss"] < 2.31 * 2


def test_the_feed_augments_with_numbas_kernels_where_numba_loads() -> None:
    """Augmentation costs every target alike: the peers run our fastest CPU backend's warp and
    shift (numba's compiled kernels), as our numba backend does."""

    pytest.importorskip("numba")
    from trainer.backends.numba_elastic import ElasticKernel, ShiftKernel

    feed = make_feed(feed_config())
    assert isinstance(feed.warp.kernel, ElasticKernel)
    assert isinstance(feed.shifter.kernel, ShiftKernel)


def test_a_batch_from_the_feed_outlives_the_next_one() -> None:
    """The augmentation kernels overwrite their output on their next call; a peer may still be
    reading a batch then (JAX's asynchronous dispatch once trained on the next batch's images
    with this one's labels, and learned nothing)."""
    feed = make_feed(feed_config())
    feed.begin(1)
    first, _ = feed.batch(0)
    kept = first.copy()
    feed.batch(1)
    np.testing.assert_array_equal(first, kept)
