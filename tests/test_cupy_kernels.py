"""CuPy's fused CUDA kernels (backends/cupy_kernels.py), each against the reference function
it names, on a GPU (skipped without one; tests/test_cuda_compile.py compiles them anywhere).

Without a GPU, tests/test_cuda_on_cpu.py runs the same kernels' source on the CPU (marker
`cuda_on_cpu`). That does not see CuPy's own runtime (its indexer, strides, streams), memory
coalescing and real warp scheduling, CUDA's rounding (fused multiply-adds, its math library),
cuBLAS, or speed: these tests and scripts/gpu_check.sh remain the proof on a real GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import _load_or_skip

from trainer import backends
from trainer.core import optim
from trainer.core.activations import ACTIVATIONS
from trainer.core.dropout import keep_mask
from trainer.core.losses import log_softmax

pytestmark = pytest.mark.gpu
DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module")
def cupy_backend() -> backends.Backend:
    return _load_or_skip("cupy")


def tolerance(dtype: type) -> float:
    return 100 * float(np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "relu", "tanh", "identity"])
def test_bias_activate_is_the_activation_of_z_plus_b(cupy_backend: backends.Backend,
                                                     name: str, dtype: type) -> None:
    rng = np.random.default_rng(0)
    z, b = rng.normal(0, 3, (33, 17)).astype(dtype), rng.normal(0, 1, 17).astype(dtype)
    got = cupy_backend.kernels.bias_activate(name, cupy_backend.asarray(z.copy()),
                                             cupy_backend.asarray(b))
    want = ACTIVATIONS[name][0](z.astype(np.float64) + b)
    np.testing.assert_allclose(cupy_backend.to_numpy(got), want, rtol=tolerance(dtype),
                               atol=tolerance(dtype))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "relu", "tanh", "identity"])
def test_activate_grad_is_the_activations_backward(cupy_backend: backends.Backend, name: str,
                                                   dtype: type, masked: bool) -> None:
    rng = np.random.default_rng(1)
    a = ACTIVATIONS[name][0](rng.normal(0, 2, (40, 9))).astype(dtype)
    g = rng.normal(0, 1, a.shape).astype(dtype)
    mask = ((rng.random(a.shape) > 0.3) / 0.7).astype(dtype) if masked else None
    device = cupy_backend.asarray
    got = cupy_backend.kernels.activate_grad(name, device(a), device(g.copy()), device(a),
                                             None if mask is None else device(mask))
    want = ACTIVATIONS[name][1](a.astype(np.float64), g * (1 if mask is None else mask))
    np.testing.assert_allclose(cupy_backend.to_numpy(got), want, rtol=tolerance(dtype),
                               atol=tolerance(dtype))


@pytest.mark.parametrize("n", [1, 32, 300, 4096])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_t_is_the_cross_entropy(cupy_backend: backends.Backend, dtype: type,
                                             n: int) -> None:
    rng = np.random.default_rng(n)
    logits, bias = rng.normal(0, 3, (n, 10)).astype(dtype), rng.normal(0, 1, 10).astype(dtype)
    y_all = rng.integers(0, 10, 2 * n)
    idx = rng.permutation(2 * n)[:n]
    device = cupy_backend.asarray
    bias_grad = device(np.zeros(10, dtype))
    loss, correct, delta_t = cupy_backend.kernels.softmax_xent_t(
        device(np.ascontiguousarray(logits.T)), device(bias), device(y_all), device(idx), -0.25,
        bias_grad)
    z = logits.astype(np.float64) + bias
    onehot = np.eye(10)[y_all[idx]]
    want_delta = -0.25 * (np.exp(log_softmax(z)) - onehot)
    tol = tolerance(dtype)
    assert float(cupy_backend.to_numpy(loss)) == pytest.approx(
        -np.sum(onehot * log_softmax(z)), rel=tol)
    assert int(cupy_backend.to_numpy(correct)) == np.sum(np.argmax(z, axis=1) == y_all[idx])
    np.testing.assert_allclose(cupy_backend.to_numpy(delta_t).T, want_delta, rtol=tol, atol=tol)
    np.testing.assert_allclose(cupy_backend.to_numpy(bias_grad), want_delta.sum(axis=0),
                               rtol=tol, atol=tol * n)


def test_softmax_xent_t_says_nan(cupy_backend: backends.Backend) -> None:
    logits = np.zeros((10, 4), np.float32)
    logits[3, 1] = np.nan
    loss, _, _ = cupy_backend.kernels.softmax_xent_t(
        cupy_backend.asarray(logits), cupy_backend.asarray(np.zeros(10, np.float32)),
        cupy_backend.asarray(np.arange(4)), cupy_backend.asarray(np.arange(4)), 1.0,
        cupy_backend.asarray(np.zeros(10, np.float32)))
    assert np.isnan(float(cupy_backend.to_numpy(loss)))


@pytest.mark.parametrize(("nesterov", "rest"), [(False, 0), (True, 0), (False, 37)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_is_optim_sgd(cupy_backend: backends.Backend, dtype: type, nesterov: bool,
                                 rest: int) -> None:
    rng = np.random.default_rng(2)
    w, v, g = (rng.normal(0, 1, 100).astype(dtype) for _ in range(3))
    want_w, want_v = w.astype(np.float64), v.astype(np.float64)
    optim.momentum(want_v[rest:], g[rest:].astype(np.float64), 0.9)  # below rest: v as given
    want_w += 0.9 * want_v + g if nesterov else want_v
    device_w, device_v = cupy_backend.asarray(w), cupy_backend.asarray(v)
    cupy_backend.kernels.sgd_update(device_w, device_v, cupy_backend.asarray(g), 0.9, nesterov,
                                    rest)
    np.testing.assert_allclose(cupy_backend.to_numpy(device_v), want_v, rtol=tolerance(dtype))
    np.testing.assert_allclose(cupy_backend.to_numpy(device_w), want_w, rtol=tolerance(dtype),
                               atol=tolerance(dtype))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_keep_mask_has_dropouts_bits(cupy_backend: backends.Backend, dtype: type,
                                     p: float) -> None:
    counter = np.arange(64 * 300, dtype=np.int64).reshape(64, 300)
    want = keep_mask(np, counter, 0xDEADBEEF, p, dtype)
    got = cupy_backend.kernels.keep_mask(cupy_backend.asarray(counter), 0xDEADBEEF, p, dtype)
    assert np.array_equal(cupy_backend.to_numpy(got), want)


def test_accumulate_adds_a_steps_figures(cupy_backend: backends.Backend) -> None:
    sums = cupy_backend.asarray(np.array([1.5, 2.0]))
    for loss, correct in ((np.float32(0.25), 3), (np.float32(0.5), 4)):
        cupy_backend.kernels.accumulate(sums, cupy_backend.asarray(loss),
                                        cupy_backend.asarray(np.int64(correct)))
    assert cupy_backend.to_numpy(sums).tolist() == [2.25, 9.0]
