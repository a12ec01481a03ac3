"""The CuPy backend's CUDA kernels run on the CPU: each kernel's own source text (from
backends/cupy_kernels.py, unchanged), compiled by the system's C++ compiler through
tests/cuda_on_cpu.py and called through backends/cupy.py's wrappers, against the function its
spec `mirrors`, in float32 and float64, on random inputs and edge values (0, -0, +-inf, NaN,
huge, tiny). tests/test_cuda_on_cpu_step.py trains with them.

What this does not see: CuPy's own runtime (its indexer, strides, streams, its code
generation around an elementwise operation, which tests/cuda_on_cpu.py imitates), memory
coalescing and real warp scheduling (a block's threads are OS threads here), NVRTC's and CUDA's
math library's rounding (fused multiply-adds, a few ulp in tanh and exp), cuBLAS, and speed.
The `-m gpu` tests (tests/test_cupy_kernels.py) and scripts/gpu_check.sh remain the proof on a
real GPU.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import cuda_on_cpu
import cupy_on_cpu
import numpy as np
import pytest

from trainer import backends
from trainer.backends import cupy_kernels as ck
from trainer.core.losses import log_softmax, loss_and_delta
from trainer.core.metrics import hits
from trainer.run.results import RunningSums

# the edge values overflow in the references as in the kernels: that is the point
pytestmark = [pytest.mark.cuda_on_cpu, pytest.mark.filterwarnings("ignore::RuntimeWarning")]
DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module")
def standin() -> backends.Backend:
    return cupy_on_cpu.standin_or_skip()


def mirrored(spec: ck.Elementwise | ck.Raw) -> Callable[..., Any]:
    """The function that `spec` says it mirrors."""
    module, _, name = spec.mirrors.rpartition(".")
    if module == "RunningSums":
        return getattr(RunningSums, name)
    return getattr(importlib.import_module(f"trainer.core.{module}"), name)


@contextmanager
def launched(spec: ck.Elementwise | ck.Raw) -> Iterator[None]:
    """The `with` block must launch the compiled kernel (not fall back on NumPy)."""
    before = cuda_on_cpu.launches[spec.name]
    yield
    assert cuda_on_cpu.launches[spec.name] > before, f"{spec.name} was not launched"


def tolerance(dtype: type) -> float:
    return 100 * float(np.finfo(dtype).eps)


def edges(dtype: type) -> np.ndarray:
    info = np.finfo(dtype)
    return np.array([0.0, -0.0, np.inf, -np.inf, np.nan, info.max / 2, -info.max / 2, info.tiny,
                     1.0, -1.0], dtype)


def with_edges(rng: np.random.Generator, shape: tuple[int, int], dtype: type,
               scale: float = 3.0) -> np.ndarray:
    """Random normal values with the edge values at random places."""
    x = rng.normal(0, scale, shape).astype(dtype)
    e = edges(dtype)
    x.flat[rng.choice(x.size, len(e), replace=False)] = e
    return x


def assert_close(got: np.ndarray, want: np.ndarray, dtype: type) -> None:
    """Within the dtype's tolerance; NaN and infinities in the same places."""
    tol = tolerance(dtype)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)


def test_every_kernel_is_covered() -> None:
    """The cases below are drawn from these specs: all 16 kernels, none left out."""
    covered = {*ck.BIAS_ACTIVATE.values(), *ck.ACTIVATE_GRAD.values(), ck.SGD_UPDATE,
               ck.KEEP_MASK, ck.ACCUMULATE, ck.SOFTMAX_XENT_T}
    assert covered == {*ck.ELEMENTWISE, *ck.RAW} and len(covered) == 16


@pytest.mark.parametrize("layout", ["rows", "columns", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ck.BIAS_ACTIVATE))
def test_bias_activate(standin: backends.Backend, name: str, dtype: type,
                       layout: str) -> None:
    """activation(z + b) in place, b broadcast over z's rows (one per column) or columns (one per
    row), z also a transposed (non-contiguous) view."""
    rng = np.random.default_rng(0)
    z = with_edges(rng, (33, 17), dtype)
    b = with_edges(rng, (17,) if layout != "columns" else (33, 1), dtype, 1.0)
    if layout == "transposed":
        z = np.ascontiguousarray(z.T).T
    want = mirrored(ck.BIAS_ACTIVATE[name])(z + b)
    with launched(ck.BIAS_ACTIVATE[name]):
        got = standin.kernels.bias_activate(name, z, b)
    assert got is z
    assert_close(z, want, dtype)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ck.BIAS_ACTIVATE))
def test_activate_grad(standin: backends.Backend, name: str, dtype: type,
                       masked: bool) -> None:
    """g = activation'(a) * (g * mask) in place, from the activation's output a."""
    rng = np.random.default_rng(1)
    a = with_edges(rng, (40, 9), dtype)
    g = with_edges(rng, (40, 9), dtype)
    mask = ((rng.random(a.shape) > 0.3) / 0.7).astype(dtype) if masked else None
    spec = ck.ACTIVATE_GRAD[name, masked]
    want = mirrored(spec)(a, g if mask is None else g * mask)
    with launched(spec):
        got = standin.kernels.activate_grad(name, a, g, np.empty_like(a), mask)
    assert got is g
    assert_close(g, want, dtype)


@pytest.mark.parametrize(("nesterov", "rest"), [(False, 0), (True, 0), (False, 37)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update(standin: backends.Backend, dtype: type, nesterov: bool,
                    rest: int) -> None:
    """optim.sgd over flat buffers; below `rest` v is already updated, so there only w += v."""
    rng = np.random.default_rng(2)
    w, v, g = (with_edges(rng, (1, 100), dtype).ravel() for _ in range(3))
    want_w, want_v = w.copy(), v.copy()
    mirrored(ck.SGD_UPDATE)(want_w[rest:], want_v[rest:], g[rest:], 0.9, nesterov)
    want_w[:rest] += want_v[:rest]
    with launched(ck.SGD_UPDATE):
        standin.kernels.sgd_update(w, v, g, 0.9, nesterov, rest)
    assert_close(v, want_v, dtype)
    assert_close(w, want_w, dtype)


@pytest.mark.parametrize("key", [0xDEADBEEF, 0xFFFFFFFF])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_keep_mask(standin: backends.Backend, dtype: type, p: float, key: int) -> None:
    """The very bits of dropout.keep_mask, counters past 2**32 included (both wrap around)."""
    counter = np.arange(64 * 300, dtype=np.int64).reshape(64, 300)
    counter[0, :4] = [2**32 - 1, 2**32, 2**40 + 5, 2**62]
    want = mirrored(ck.KEEP_MASK)(np, counter, key, p, dtype)
    with launched(ck.KEEP_MASK):
        got = standin.kernels.keep_mask(counter, key, p, dtype)
    assert got.dtype == dtype and np.array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulate(standin: backends.Backend, dtype: type) -> None:
    """RunningSums.add on a device with the kernel and without it (plain float64 adds): the
    same sums, bit for bit, huge values, infinities and NaN included."""
    without = dataclasses.replace(standin, kernels=standin.kernels.without("accumulate"))
    rng = np.random.default_rng(4)
    losses = [*rng.normal(0, 10, 20).astype(dtype), *edges(dtype)]
    like = np.zeros(1, dtype)
    sums = {be.kernels.accumulate is None: RunningSums(be, like, 1.5, 2.0)
            for be in (standin, without)}
    for i, loss in enumerate(losses):
        with launched(ck.ACCUMULATE):
            for s in sums.values():
                s.add(np.array(loss, dtype), np.array(i % 7, np.int64), i + 1, False)
        got, want = sums[False].values(), sums[True].values()
        np.testing.assert_array_equal(got, want, err_msg=f"after {i + 1} steps")
    assert np.isnan(got[0]) and got[1] == 2.0 + sum(i % 7 for i in range(len(losses)))


def softmax_xent(be: backends.Backend, logits: np.ndarray, bias: np.ndarray, y_all: np.ndarray,
                 idx: np.ndarray, scale: float) -> tuple[float, int, np.ndarray, np.ndarray]:
    """The kernel on a transposed copy of (n, classes) logits: (loss, correct, delta (n,
    classes), bias gradient)."""
    bias_grad = np.zeros_like(bias)
    with launched(ck.SOFTMAX_XENT_T):
        loss, correct, delta_t = be.kernels.softmax_xent_t(np.array(logits.T, order="C"), bias,
                                                           y_all, idx, scale, bias_grad)
    return float(loss), int(correct), delta_t.T, bias_grad


@pytest.mark.parametrize("classes", [10, 26, 47, 62])
@pytest.mark.parametrize("n", [1, 31, 32, 257, 4096])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_t(standin: backends.Backend, dtype: type, n: int,
                        classes: int) -> None:
    """losses.loss_and_delta's cross-entropy (summed) and delta, metrics.hits' count exactly,
    and the bias gradient (the delta summed over the samples), labels picked as y_all[idx]."""
    rng = np.random.default_rng(n * classes)
    logits = rng.normal(0, 3, (n, classes)).astype(dtype)
    bias = rng.normal(0, 1, classes).astype(dtype)
    y_all = rng.integers(0, classes, 2 * n)
    idx = rng.permutation(2 * n)[:n]
    loss, correct, delta, bias_grad = softmax_xent(standin, logits, bias, y_all, idx, -0.25)
    z = logits + bias  # in the dtype, as the kernel adds them: the same argmax
    onehot = np.eye(classes)[y_all[idx]]
    want_loss, want_delta = mirrored(ck.SOFTMAX_XENT_T)(
        "cross_entropy", "softmax", z.astype(np.float64),
        np.exp(log_softmax(z.astype(np.float64))), onehot)
    tol = tolerance(dtype)
    assert loss == pytest.approx(float(want_loss), rel=tol)
    assert correct == int(hits(z, onehot.astype(dtype)))
    np.testing.assert_allclose(delta, -0.25 * want_delta, rtol=tol, atol=tol)
    np.testing.assert_allclose(bias_grad, -0.25 * want_delta.sum(axis=0), rtol=tol,
                               atol=tol * n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_t_edges(standin: backends.Backend, dtype: type) -> None:
    """Ties (all-zero logits: every sample a hit, ln k each), huge logits, -inf in a wrong
    class (finite), and a NaN or +inf logit, which makes the loss NaN as in log_softmax."""
    n, classes = 40, 10
    y = np.arange(n) % classes
    idx = np.arange(n)
    loss, correct, _, _ = softmax_xent(standin, np.zeros((n, classes), dtype),
                                       np.zeros(classes, dtype), y, idx, 1.0)
    assert loss == pytest.approx(n * np.log(classes), rel=tolerance(dtype)) and correct == n
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (n, classes)).astype(dtype)
    logits[0] *= np.finfo(dtype).max / 10
    logits[1, (y[1] + 1) % classes] = -np.inf
    loss, correct, _, _ = softmax_xent(standin, logits, np.zeros(classes, dtype), y, idx, 1.0)
    z = logits.astype(np.float64)
    assert loss == pytest.approx(-log_softmax(z)[idx, y].sum(), rel=tolerance(dtype))
    assert correct == int(hits(logits, np.eye(classes, dtype=dtype)[y]))
    for bad in (np.nan, np.inf):
        logits[5, 3] = bad
        loss, _, _, _ = softmax_xent(standin, logits, np.zeros(classes, dtype), y, idx, 1.0)
        assert np.isnan(loss)
        assert np.isnan(loss_and_delta("cross_entropy", "softmax", logits, logits,
                                       np.eye(classes, dtype=dtype)[y])[0])


def test_a_wrong_argument_type_is_refused(standin: backends.Backend) -> None:
    """A scalar of the wrong width (a Python int for an `int`) would be garbage on a GPU."""
    kernel = ck.build(cupy_on_cpu.namespace())["softmax_xent_t"]["float32"]
    z = np.zeros((10, 4), np.float32)
    args = [z, z[:, 0].copy(), np.arange(4), np.arange(4), np.float32(1), 10, np.int32(4),
            z[:, 0].copy(), np.zeros((), np.float32), np.zeros((), np.int64)]
    with pytest.raises(TypeError, match="classes"):
        kernel((1,), (ck.BLOCK,), tuple(args))
