"""Every fast variant of the math, named by the reference it mirrors and checked against it, from
one table {reference: [variants]} (as PyTorch's test_foreach_matches_forloop runs each
optimizer's fused and multi-tensor variants against the for-loop one). A variant that a backend
here cannot load skips; the GPU ones run under the `gpu` marker."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
from conftest import _load_or_skip

from trainer import backends
from trainer.backends.fused_args import HIDDEN
from trainer.core import optim
from trainer.core.activations import ACTIVATIONS, LEAKY_SLOPE
from trainer.core.dropout import hash32, keep_mask
from trainer.core.losses import loss_and_delta
from trainer.core.metrics import hits

RNG = np.random.default_rng(11)
RTOL = 1e-12  # float64; numba's own exp and tanh are a few ulps from NumPy's


def _kernels(name: str, device: str | None = None) -> backends.Backend:
    return _load_or_skip(name, device)


def _numba_step() -> Any:
    _load_or_skip("numba")
    from trainer.backends import numba_step
    return numba_step


# --- softmax + cross-entropy: losses.loss_and_delta and metrics.hits ---------------------------

def check_softmax_xent(variant: Callable[..., tuple[float, float, np.ndarray]]) -> None:
    """variant(z, labels, scale) -> (summed loss, correct count, scale * d loss / d z)."""
    z, labels, scale = RNG.normal(0, 3, (33, 10)), RNG.integers(0, 10, 33), -0.05
    onehot = np.eye(10)[labels]
    loss, delta = loss_and_delta("cross_entropy", "softmax", z, ACTIVATIONS["softmax"][0](z),
                                 onehot)
    got_loss, got_correct, got_delta = variant(z.copy(), labels, scale)
    assert float(got_loss) == pytest.approx(float(loss), rel=RTOL)
    assert int(got_correct) == int(hits(z, onehot))
    np.testing.assert_allclose(got_delta, scale * delta, rtol=RTOL, atol=1e-15)


def softmax_xent_t(backend: str) -> Callable[..., Any]:
    def variant(z: np.ndarray, labels: np.ndarray, scale: float) -> Any:
        be = _kernels(backend)
        bias, grad = be.asarray(np.zeros(z.shape[1])), be.asarray(np.empty(z.shape[1]))
        idx = np.arange(z.shape[0])
        loss, correct, delta_t = be.kernels.softmax_xent_t(
            be.asarray(np.ascontiguousarray(z.T)), bias, be.asarray(labels), be.asarray(idx),
            scale, grad)
        delta = be.to_numpy(delta_t).T
        np.testing.assert_allclose(be.to_numpy(grad), delta.sum(axis=0), rtol=RTOL, atol=1e-15)
        return be.to_numpy(loss), be.to_numpy(correct), delta
    variant.__name__ = f"{backend}.softmax_xent_t"
    return variant


def numba_softmax_xent(z: np.ndarray, labels: np.ndarray, scale: float) -> Any:
    loss, correct = _numba_step()._softmax_xent(z, labels.astype(np.int64), scale)
    return loss, correct, z  # the delta, in place of the logits


# --- the dropout hash: dropout.hash32 ----------------------------------------------------------

def check_hash32(variant: Callable[[np.ndarray], np.ndarray]) -> None:
    """variant(x) -> hash32(x), the same bits, for int64 values in [0, 2**32)."""
    x = np.concatenate([RNG.integers(0, 2**32, 5000), [0, 1, 2**31, 2**32 - 1]]).astype(np.int64)
    np.testing.assert_array_equal(np.asarray(variant(x), dtype=np.int64), hash32(x))


def kernel_hash32(backend: str) -> Callable[..., Any]:
    def variant(x: np.ndarray) -> np.ndarray:
        be = _kernels(backend)
        return be.to_numpy(be.kernels.hash32(be.asarray(x)))
    variant.__name__ = f"{backend}.hash32"
    return variant


def check_keep_mask(variant: Callable[..., np.ndarray]) -> None:
    """variant(counter, key, p) -> dropout.keep_mask's multipliers (hash32 inside), the same
    bits."""
    counter = np.arange(64 * 50, dtype=np.int64).reshape(64, 50)
    for p in (0.1, 0.5, 0.9):
        key = int(RNG.integers(0, 2**32))
        np.testing.assert_array_equal(variant(counter, key, p),
                                      keep_mask(np, counter, key, p, np.float64))


def kernel_keep_mask(backend: str) -> Callable[..., Any]:
    def variant(counter: np.ndarray, key: int, p: float) -> np.ndarray:
        be = _kernels(backend)
        if be.kernels.keep_mask is None:
            pytest.skip(f"{backend} has no keep_mask kernel")
        return be.to_numpy(be.kernels.keep_mask(be.asarray(counter), key, p, be.xp.float64))
    variant.__name__ = f"{backend}.keep_mask"
    return variant


def check_warp(variant: Callable[..., np.ndarray]) -> None:
    """variant(warp, images, idx) -> elastic.ElasticWarp's plain warp (whose noise is
    dropout.hash32 of counters), the same bits."""
    from trainer.core.elastic import ElasticWarp

    images, idx = RNG.random((6, 8 * 8)), np.arange(6, dtype=np.int64)
    warp = ElasticWarp(np, np.asarray, (8, 8), alpha=6.0, sigma=1.5, rotate=10.0, scale=0.1,
                       background=0.0, seed=3, dtype=np.float64)
    warp.use(2)
    np.testing.assert_array_equal(variant(warp, images, idx), warp(images, idx))


def numpy_elastic(warp: Any, images: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """backends/numpy_elastic.py, which hashes its noise inline."""
    kernel = _kernels("numpy").kernels.elastic(warp)
    return kernel(images, idx, warp.current_key())


# --- the momentum update: optim.sgd (optim.momentum, then w += v) -------------------------------

def check_sgd(variant: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
    """variant(w, v, g, m) -> (w, v) after optim.sgd's plain momentum step, in place or not."""
    w, v, g = (RNG.normal(0, 1, 1000) for _ in range(3))
    want_w, want_v = optim.sgd(w.copy(), v.copy(), g.copy(), 0.9)
    got_w, got_v = variant(w.copy(), v.copy(), g.copy(), 0.9)
    np.testing.assert_allclose(got_v, want_v, rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(got_w, want_w, rtol=RTOL, atol=1e-15)


def kernel_sgd_update(backend: str) -> Callable[..., Any]:
    def variant(w: np.ndarray, v: np.ndarray, g: np.ndarray, m: float) -> Any:
        be = _kernels(backend)
        if be.kernels.sgd_update is None:
            pytest.skip(f"{backend} has no sgd_update kernel")
        w, v, g = be.asarray(w), be.asarray(v), be.asarray(g)
        be.kernels.sgd_update(w, v, g, m, False, 0)
        return be.to_numpy(w), be.to_numpy(v)
    variant.__name__ = f"{backend}.sgd_update"
    return variant


def numpy_gemm_acc_axpy(w: np.ndarray, v: np.ndarray, g: np.ndarray, m: float) -> Any:
    """VelocityStep's way: v = m v + a^T d inside the BLAS's GEMM (its beta; here a is the
    identity, transposed as the step passes it, and d = g), then w += v by the BLAS's axpy."""
    be = _kernels("numpy")
    if be.kernels.gemm_acc is None or be.kernels.axpy is None:
        pytest.skip("numpy's BLAS offers no gemm_acc or axpy")
    be.kernels.gemm_acc(np.eye(40).T, g.reshape(40, 25), v.reshape(40, 25), 1.0, m)
    be.kernels.axpy(v, w)(1.0)
    return w, v


def numba_bias_momentum(w: np.ndarray, v: np.ndarray, g: np.ndarray, m: float) -> Any:
    """numba's kernel: v = m v + delta summed over the batch (one row here), then w += v."""
    ns = _numba_step()
    ns._bias_momentum(v, g.reshape(1, -1), m)
    ns._add(w, v)
    return w, v


# --- the forward and backward kernels: activations.ACTIVATIONS ----------------------------------

FAST_ACTS = ("sigmoid", "tanh", "relu", "identity")  # what the kernels offer


def check_forward(variant: Callable[..., np.ndarray], names: tuple[str, ...] = FAST_ACTS) -> None:
    """variant(name, z, b) -> activation(z + b) (network.forward's layer), for each name."""
    for name in names:
        z, b = RNG.normal(0, 3, (17, 9)), RNG.normal(0, 1, 9)
        np.testing.assert_allclose(variant(name, z.copy(), b), ACTIVATIONS[name][0](z + b),
                                   rtol=RTOL, atol=1e-15, err_msg=name)


def check_backward(variant: Callable[..., np.ndarray], names: tuple[str, ...] = FAST_ACTS
                   ) -> None:
    """variant(name, a, g) -> activation's backward(a, g) from its output a (network.backward)."""
    for name in names:
        a = ACTIVATIONS[name][0](RNG.normal(0, 3, (17, 9)))
        g = RNG.normal(0, 1, (17, 9))
        np.testing.assert_allclose(variant(name, a, g.copy()), ACTIVATIONS[name][1](a, g),
                                   rtol=RTOL, atol=1e-15, err_msg=name)


def kernel_forward(backend: str) -> Callable[..., Any]:
    def variant(name: str, z: np.ndarray, b: np.ndarray) -> np.ndarray:
        be = _kernels(backend)
        zd, bd = be.asarray(z), be.asarray(b)
        out = be.kernels.bias_activate(name, zd, bd) if be.kernels.bias_activate else None
        if out is None:  # the two-pass way: the bias, then the activation in place
            zd += bd
            out = be.kernels.activate(name, zd)
        return be.to_numpy(out)
    variant.__name__ = f"{backend}.bias_activate/activate"
    return variant


def kernel_backward(backend: str) -> Callable[..., Any]:
    def variant(name: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
        be = _kernels(backend)
        ad = be.asarray(a)
        return be.to_numpy(be.kernels.activate_grad(name, ad, be.asarray(g),
                                                     be.xp.empty_like(ad)))
    variant.__name__ = f"{backend}.activate_grad"
    return variant


def numba_forward(name: str, z: np.ndarray, b: np.ndarray) -> np.ndarray:
    _numba_step()._bias_activate(z, b, HIDDEN[name], LEAKY_SLOPE)
    return z


def numba_backward(name: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    _numba_step()._activate_grad(g, a, HIDDEN[name], LEAKY_SLOPE)
    return g


# numba's kernels offer leaky ReLU too
check_forward_leaky = partial(check_forward, names=("leaky_relu", *FAST_ACTS))
check_backward_leaky = partial(check_backward, names=("leaky_relu", *FAST_ACTS))


# --- the fused kernel's dropout and update rules: dropout.keep_mask, optim.* ---------------------

def numba_keep_mask(counter: np.ndarray, key: int, p: float) -> np.ndarray:
    """numba's dropout: the input times the multipliers, and the multipliers, from the counter
    r * width + j (counter here is that arange) and the step's key."""
    ones, out, mask = np.ones(counter.shape), np.empty(counter.shape), np.empty(counter.shape)
    _numba_step()._drop(ones, out, mask, key, int(p * 2**32), 1.0 / (1.0 - p))
    np.testing.assert_array_equal(out, mask)
    return mask


def check_nesterov(variant: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
    """variant(w, v, g, m) -> (w, v) after optim.sgd's Nesterov step."""
    w, v, g = (RNG.normal(0, 1, 1000) for _ in range(3))
    want_w, want_v = optim.sgd(w.copy(), v.copy(), g.copy(), 0.9, nesterov=True)
    got_w, got_v = variant(w.copy(), v.copy(), g.copy(), 0.9)
    np.testing.assert_allclose(got_v, want_v, rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(got_w, want_w, rtol=RTOL, atol=1e-15)


def numba_nesterov(w: np.ndarray, v: np.ndarray, g: np.ndarray, m: float) -> Any:
    _numba_step()._nesterov(w, v, g, m)
    return w, v


def check_adam(variant: Callable[..., tuple[np.ndarray, ...]]) -> None:
    """variant(w, first, second, g, rates) -> (w, first, second) after optim.adam's step, with
    and without AdamW's decay."""
    for decay in (0.0, 0.1):
        w, first, g = (RNG.normal(0, 1, 1000) for _ in range(3))
        second = RNG.random(1000)
        rates = optim.adam_rates(0.01, 3, 0.9, 0.999, decay)
        want = optim.adam(w.copy(), first.copy(), second.copy(), g.copy(), rates, beta1=0.9,
                          beta2=0.999, epsilon=1e-8)
        got = variant(w.copy(), first.copy(), second.copy(), g.copy(), rates)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-15)


def numba_adam(w: np.ndarray, first: np.ndarray, second: np.ndarray, g: np.ndarray,
               rates: optim.AdamRates) -> Any:
    _numba_step()._adam(w, first, second, g, 0.9, 0.999, 1e-8, rates.step, rates.bias2,
                        rates.decay or 1.0, rates.decay is not None)
    return w, first, second


def check_penalty(variant: Callable[..., np.ndarray]) -> None:
    """variant(grad, w, kind, factor) -> optim.add_penalty's grad, for L2 and L1."""
    for kind in ("L2", "L1"):
        grad, w = RNG.normal(0, 1, 1000), RNG.normal(0, 1, 1000)
        w[:5] = 0.0  # sign(0) is 0
        want = optim.add_penalty(grad.copy(), w, kind, 0.3, -0.05)
        np.testing.assert_allclose(variant(grad.copy(), w, kind, 0.3 * -0.05), want,
                                   rtol=RTOL, atol=1e-15, err_msg=kind)


def numba_penalty(grad: np.ndarray, w: np.ndarray, kind: str, factor: float) -> np.ndarray:
    from trainer.backends.fused_args import L1, L2

    _numba_step()._penalize(grad, w, factor, {"L2": L2, "L1": L1}[kind])
    return grad


# --- the table ---------------------------------------------------------------------------------

def gpu(variant: Callable[..., Any]) -> Callable[..., Any]:
    """A variant only a GPU runs (the `gpu` marker)."""
    variant.gpu = True  # type: ignore[attr-defined]
    return variant


VARIANTS: dict[str, tuple[Callable[[Any], None], list[Callable[..., Any]]]] = {
    "losses.loss_and_delta(cross_entropy) + metrics.hits": (check_softmax_xent, [
        softmax_xent_t("numpy"), numba_softmax_xent, gpu(softmax_xent_t("cupy"))]),
    "dropout.hash32": (check_hash32, [kernel_hash32("numpy")]),
    "dropout.keep_mask (hash32 inside)": (check_keep_mask, [
        numba_keep_mask, gpu(kernel_keep_mask("cupy"))]),
    "elastic.ElasticWarp (hash32 inside)": (check_warp, [numpy_elastic]),
    "optim.sgd (momentum)": (check_sgd, [
        kernel_sgd_update("numpy"), numpy_gemm_acc_axpy, numba_bias_momentum,
        gpu(kernel_sgd_update("cupy"))]),
    "optim.sgd (nesterov)": (check_nesterov, [numba_nesterov]),
    "optim.adam (and AdamW's decay)": (check_adam, [numba_adam]),
    "optim.add_penalty (L2, L1)": (check_penalty, [numba_penalty]),
    "activations (forward)": (check_forward, [
        kernel_forward("numpy"), gpu(kernel_forward("cupy"))]),
    "activations (forward, leaky ReLU too)": (check_forward_leaky, [numba_forward]),
    "activations (backward)": (check_backward, [
        kernel_backward("numpy"), gpu(kernel_backward("cupy"))]),
    "activations (backward, leaky ReLU too)": (check_backward_leaky, [numba_backward]),
}


@pytest.mark.parametrize(("check", "variant"), [
    pytest.param(check, v, id=f"{ref} <- {v.__name__}",
                 marks=[pytest.mark.gpu] if getattr(v, "gpu", False) else [])
    for ref, (check, variants) in VARIANTS.items() for v in variants])
def test_variant_matches_its_reference(check: Callable[[Any], None], variant: Any) -> None:
    check(variant)
