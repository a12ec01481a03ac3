"""Every other backend against numpy: same seed, same batches, same weights; and each backend's
kernels against its own plain array-API step."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import _load_or_skip, make_dataset
from helpers import skip_if_numpys_step

from trainer import backends
from trainer.core.config import Config
from trainer.run.results import Engine
from trainer.run.train import train

# the parity configs: one with a penalty (numba's kernel does not cover it: numba skips it), one
# that every backend trains with its own code
PARITY = {"l2": {}, "covered": {"regularization_type": None, "regularization_rate": 0.0}}


def small_config(dtype: str, **changes) -> Config:
    return Config.from_dict({
        "layers": [{"nodes": 20, "activation": "Tanh"}, {"nodes": 16, "activation": "ReLU"},
                   {"nodes": 12, "activation": "Softmax"}, {"nodes": 4}],
        "learning_rate": 0.01, "momentum": 0.9, "batch_size": 16, "epochs": 2,
        "dtype": dtype, "regularization_type": "L2", "regularization_rate": 1e-3,
    } | changes)


@pytest.mark.parametrize("parity", PARITY)
def test_float64_weights_match_numpy_after_50_steps(other_backend: backends.Backend,
                                                    parity: str) -> None:
    data = make_dataset(n_train=400)  # 25 steps per epoch, 2 epochs
    config = small_config("float64", **PARITY[parity])
    skip_if_numpys_step(other_backend, config)
    ref = train(config, data, "numpy")
    got = train(config, data, other_backend)
    for r, g in zip(ref.params, got.params, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    assert got.history[-1].loss == pytest.approx(ref.history[-1].loss, rel=1e-10)


@pytest.mark.parametrize("parity", PARITY)
def test_float32_weights_match_numpy_within_dtype_tolerance(
        other_backend: backends.Backend, parity: str) -> None:
    # Summation order differs between BLAS libraries, so each step differs by a few ulps and 50
    # momentum steps amplify that a little: 100 eps relative to the weights' scale is the bound.
    data = make_dataset(n_train=400)
    config = small_config("float32", **PARITY[parity])
    skip_if_numpys_step(other_backend, config)
    ref = train(config, data, "numpy")
    got = train(config, data, other_backend)
    tol = 100 * np.finfo(np.float32).eps
    for r, g in zip(ref.params, got.params, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.max(np.abs(r)))


@pytest.mark.parametrize("variant", [{"nesterov": True}, {"loss": "mse", "loss_reduction": "mean"},
                                     {"regularization_type": "L1"}])
def test_options_keep_parity(other_backend: backends.Backend, variant: dict) -> None:
    data = make_dataset(n_train=160)
    config = small_config("float64", **variant)
    skip_if_numpys_step(other_backend, config)
    ref = train(config, data, "numpy")
    got = train(config, data, other_backend)
    for r, g in zip(ref.params, got.params, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


def test_same_seed_gives_bitwise_identical_weights() -> None:
    data = make_dataset()
    a = train(small_config("float32"), data, "numpy")
    b = train(small_config("float32"), data, "numpy")
    c = train(small_config("float32", seed=1), data, "numpy")
    assert all(np.array_equal(x, y) for x, y in zip(a.params, b.params, strict=True))
    assert not np.array_equal(a.params[0], c.params[0])


@pytest.mark.slow
def test_one_epoch_on_real_mnist_predicts_like_numpy(
        other_backend: backends.Backend, mnist) -> None:
    """float32, 5000 MNIST training images, 1 epoch: test predictions agree on >= 99.9%."""
    config = Config.from_dict({
        "layers": [{"nodes": 784, "activation": "Sigmoid"}, {"nodes": 128, "activation": "Softmax"},
                   {"nodes": 10}],
        "learning_rate": 0.01, "momentum": 0.5, "batch_size": 32, "epochs": 1})
    skip_if_numpys_step(other_backend, config)
    ref = train(config, mnist, "numpy", limit_train=5000)
    got = train(config, mnist, other_backend, limit_train=5000)
    agree = np.mean(ref.test_predictions == got.test_predictions)
    assert agree >= 0.999, f"only {agree:.4%} of test predictions agree"
    assert ref.test_accuracy > 0.85


def test_fast_path_matches_plain_path(kernel_backend: backends.Backend) -> None:
    """The backend's kernels (buffers, fused ops, velocity GEMMs) against plain array-API code."""
    data = make_dataset(n_train=400)
    for dtype, rtol in (("float64", 1e-10), ("float32", 100 * np.finfo(np.float32).eps)):
        config = small_config(dtype)
        fast = train(config, data, kernel_backend, engine=Engine(fast=True))
        plain = train(config, data, kernel_backend, engine=Engine(fast=False))
        for f, p in zip(fast.params, plain.params, strict=True):
            np.testing.assert_allclose(f, p, rtol=rtol, atol=rtol * np.max(np.abs(p)))


# what backends/cupy.py builds; its load-time self-test drops gemm_acc when cuBLAS disagrees
CUPY_KERNELS = {"matmul", "take", "sum0", "activate", "bias_activate", "activate_grad",
                "softmax_xent_t", "sgd_update", "keep_mask", "accumulate", "gemm_acc"}


@pytest.mark.gpu
def test_cupy_offers_every_fast_kernel() -> None:
    """A kernel the backend dropped at load time (a failed self-test) fails here, on a GPU."""
    be = _load_or_skip("cupy")
    assert set(be.kernels.offered()) == CUPY_KERNELS and not be.kernels.dropped


def test_a_run_moves_its_arrays_inside_the_backends_scope() -> None:
    """CuPy's current device is per thread: a run (and an evaluation) enters the backend's
    scope, so that its arrays land on the chosen device whichever thread trains."""
    import contextlib
    import dataclasses

    from trainer.run.inference import evaluate_model
    from trainer.run.model_io import SavedModel

    depth: list[int] = [0]
    seen: list[int] = []

    @contextlib.contextmanager
    def scope():
        depth[0] += 1
        yield
        depth[0] -= 1

    def asarray(a: np.ndarray) -> np.ndarray:
        seen.append(depth[0])
        return np.ascontiguousarray(a)

    numpy = dataclasses.replace(backends.load("numpy"), scope=scope, asarray=asarray)
    data = make_dataset(n_train=64)
    result = train(small_config("float32", epochs=1), data, numpy)
    assert seen and min(seen) == 1 and depth == [0]
    seen.clear()
    model = SavedModel(result.config, result.params, result.scaling, data.class_names)
    evaluate_model(model, data, numpy)
    assert seen and min(seen) == 1
