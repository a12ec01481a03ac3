"""The training step against an independent reference: network.py's forward and backward (which
test_gradients checks against finite differences), the momentum rule and the penalty written out
here, in float64. Every way the step can keep its state (plain array API, flat buffers, velocity
GEMMs) and every CPU backend must match it."""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import pytest
from helpers import VARIANTS, step_config
from references import reference_steps

from trainer import backends
from trainer.backends import numpy_blas
from trainer.core.dropout import keep_mask
from trainer.core.network import forward, init_params
from trainer.core.step import FlatStep, PlainStep, VelocityStep, make_step
from trainer.core.step import flat as step_module


@pytest.fixture
def backend(step_backend: backends.Backend) -> backends.Backend:
    """conftest's step_backend: numba's per-batch steps are numpy's own code (NumPy against
    itself proves nothing); its fused step is tested in test_numba_step.py."""
    return step_backend


def one_pass(k: backends.Kernels) -> backends.Kernels:
    """NumPy stand-ins for the kernels only CuPy offers (bias_activate, sgd_update, keep_mask,
    accumulate), each doing what its contract says with plain NumPy: the step's use of them is
    tested here, on the CPU; tests/test_cupy_kernels.py checks the CUDA ones on a GPU."""
    def bias_activate(name: str, z: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        if name not in ("sigmoid", "relu", "tanh", "identity"):
            return None
        z += b
        return k.activate(name, z)

    def sgd_update(w, v, g, m, nesterov, rest) -> None:
        v[rest:] *= m
        v[rest:] += g[rest:]
        w += m * v + g if nesterov else v

    def accumulate(sums: np.ndarray, loss: np.ndarray, correct: np.ndarray) -> None:
        sums[0] += loss
        sums[1] += correct

    return dataclasses.replace(
        k, bias_activate=bias_activate, sgd_update=sgd_update, accumulate=accumulate,
        keep_mask=lambda counter, key, p, dtype: keep_mask(np, counter, key, p, dtype))


def kernel_sets(backend: backends.Backend) -> dict[str, tuple[type, backends.Kernels | None]]:
    """The kernel combinations that select each kind of step on this backend, by name."""
    k = backend.kernels
    sets: dict[str, tuple[type, backends.Kernels | None]] = {"plain": (PlainStep, None)}
    if k.matmul and k.sum0:
        sets["flat"] = (FlatStep, k.without("gemm_acc"))
        sets["flat-one-pass"] = (FlatStep, one_pass(k).without("gemm_acc"))
    if k.gemm_acc:
        sets["velocity"] = (VelocityStep, k)
        sets["velocity-one-pass"] = (VelocityStep, one_pass(k))
    return sets


@pytest.mark.parametrize("acc_min", [0, step_module.GEMM_ACC_MIN], ids=["gemm-acc", "small"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_step_matches_reference_in_every_mode(backend: backends.Backend, variant: str,
                                              acc_min: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # these weights are small: acc_min 0 sends them through the velocity GEMM all the same
    monkeypatch.setattr(step_module, "GEMM_ACC_MIN", acc_min)
    cfg = step_config(**VARIANTS[variant])
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (10, 6))
    labels = rng.integers(0, 4, 10)
    t = np.eye(4)[labels]
    batches = [np.array([0, 3, 5, 7]), np.array([1, 2, 9, 4]), np.array([8, 6])]  # last partial
    host = init_params(cfg.sizes, cfg.activations, "xavier", rng, "float64")
    want_params, want_losses, _ = reference_steps(cfg, host, x, t, batches, cfg.learning_rate)
    for mode, (kind, kernels) in kernel_sets(backend).items():
        params = [backend.asarray(p.copy()) for p in host]  # numpy's asarray does not copy
        velocities = [backend.asarray(np.zeros_like(p)) for p in host]
        step = make_step(cfg, backend.xp, params, velocities, kernels)
        # Nesterov needs the step itself, so the velocity GEMM gives way to the flat buffers
        assert type(step) is (FlatStep if variant == "nesterov" and kind is VelocityStep
                              else kind)
        xd, yd = backend.asarray(x), backend.asarray(labels)
        losses = [float(backend.to_numpy(step(xd, yd, backend.asarray(i), cfg.learning_rate)[0]))
                  for i in batches]
        np.testing.assert_allclose(losses, want_losses, rtol=1e-12, err_msg=mode)
        for got, want in zip(step.params, want_params, strict=True):
            np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-11, atol=1e-13,
                                       err_msg=mode)


def test_correct_count_is_the_argmax_hits(backend: backends.Backend) -> None:
    cfg = step_config()
    rng = np.random.default_rng(5)
    x, labels = rng.normal(0, 1, (8, 6)), rng.integers(0, 4, 8)
    host = init_params(cfg.sizes, cfg.activations, "xavier", rng, "float64")
    outs, _ = forward(host, cfg.activations, x)
    want = int(np.sum(np.argmax(outs[-1], axis=1) == labels))
    for _, kernels in kernel_sets(backend).values():
        step = make_step(cfg, backend.xp, [backend.asarray(p.copy()) for p in host],
                         [backend.asarray(np.zeros_like(p)) for p in host], kernels)
        _, correct = step(backend.asarray(x), backend.asarray(labels),
                          backend.asarray(np.arange(8)), 0.0)
        assert float(backend.to_numpy(correct)) == want


def test_numpy_offers_the_velocity_gemm() -> None:
    """On numpy's own OpenBLAS the fastest step must be in use (or the benchmark is off)."""
    numpy = backends.load("numpy")
    assert numpy.kernels.gemm_acc is not None and numpy.kernels.axpy is not None
    shapes = [(6, 5), (5,), (5, 3), (3,), (3, 4), (4,)]
    step = make_step(step_config(), numpy.xp, [np.zeros(s) for s in shapes],
                     [np.zeros(s) for s in shapes], numpy.kernels)
    assert type(step) is VelocityStep and step._add_velocity is not None
    assert type(make_step(step_config(), numpy.xp, step.params, step.velocities)) is PlainStep


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blas_kernels_match_numpy(dtype) -> None:
    """numpy_blas's ctypes calls against plain NumPy, bound buffers included."""
    rng = np.random.default_rng(1)
    gemm_acc, axpy = numpy_blas.load(), numpy_blas.load_axpy()
    a, b, out = (rng.random(s).astype(dtype) for s in ((9, 5), (9, 4), (5, 4)))
    want = 0.7 * out + (-1.5) * (a.T @ b)
    np.testing.assert_allclose(gemm_acc(a.T, b, out, -1.5, 0.7), want, rtol=1e-6)
    for layout in ("C", "F"):  # the same b and out again (their addresses are remembered)
        b[...] = rng.random(b.shape)
        a = np.asarray(rng.random((9, 5)), dtype=dtype, order=layout)
        want = 0.5 * out + a.T @ b
        np.testing.assert_allclose(gemm_acc(a.T, b, out, 1.0, 0.5), want, rtol=1e-6)
    b.shape = (4, 9)  # reshaped in place: its remembered leading dimension no longer holds
    a, out = rng.random((5, 4)).astype(dtype), rng.random((5, 9)).astype(dtype)
    want = 0.5 * out + a @ b
    np.testing.assert_allclose(gemm_acc(a, b, out, 1.0, 0.5), want, rtol=1e-6)
    gone = weakref.ref(out)  # remembered, not kept alive: a finished run's buffers are freed
    del out
    assert gone() is None
    x, y = rng.random(1000).astype(dtype), rng.random(1000).astype(dtype)
    update, want = axpy(x, y), y.copy()
    for alpha in (1.0, -0.25):  # the same bound buffers, again and again
        update(alpha)
        want += dtype(alpha) * x
        np.testing.assert_allclose(y, want, rtol=1e-6)
    strided = rng.random(2000).astype(dtype)  # not contiguous: NumPy does it instead
    view, want = strided[::2], strided[::2] + 3.0 * x
    axpy(x, view)(3.0)
    np.testing.assert_allclose(view, want, rtol=1e-6)


class UnhashableDevice:
    """Like cupy.cuda.Device: it defines == and so has no hash."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnhashableDevice)

    __hash__ = None  # type: ignore[assignment]


class OnDevice(np.ndarray):
    """A NumPy array whose `.device` is an UnhashableDevice, as a CuPy array's is."""

    @property
    def device(self) -> UnhashableDevice:  # type: ignore[override]
        return UnhashableDevice()


@pytest.mark.parametrize(("nesterov", "rest"), [(False, 0), (True, 0), (True, 70_000),
                                               (False, 65_536), (True, 131_100)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_sgd_update_is_optim_sgd_bit_for_bit(dtype: str, nesterov: bool,
                                                   rest: int) -> None:
    """NumPy's sgd_update works a cache-sized chunk at a time (several chunks here, `rest`
    inside one and on a boundary): the same bits as optim.sgd's passes over whole buffers."""
    from trainer.core import optim

    kernel = backends.load("numpy").kernels.sgd_update
    assert kernel is not None
    rng = np.random.default_rng(5)
    w, v, g = (rng.normal(0, 1, 150_001).astype(dtype) for _ in range(3))
    want_w, want_v = w.copy(), v.copy()
    optim.momentum(want_v[rest:], g[rest:], 0.9)  # below rest: the velocity as given
    want_w += 0.9 * want_v + g if nesterov else want_v
    kernel(w, v, g, 0.9, nesterov, rest)
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(w, want_w)


def test_softmax_xent_kernel_takes_an_unhashable_device() -> None:
    """The crash on CuPy's first step: the kernel keyed a cache by the device object. And the
    kernel's whole contract against losses.py: bias added, labels y_all[idx], bias gradient."""
    from trainer.backends import ndkernels
    from trainer.core.losses import log_softmax

    with pytest.raises(TypeError):
        hash(OnDevice((1,)).device)
    rng = np.random.default_rng(0)
    y_all, idx = rng.integers(0, 4, 9), np.array([7, 0, 3, 3, 8])
    kernel = ndkernels.make(np).softmax_xent_t
    for _ in range(2):  # the second call finds the cached column indices
        logits, bias = rng.normal(0, 2, (5, 4)), rng.normal(0, 1, 4)
        bias_grad = np.zeros(4)
        loss, correct, delta_t = kernel(
            np.ascontiguousarray(logits.T).view(OnDevice), bias, y_all.view(OnDevice),
            idx.view(OnDevice), -0.5, bias_grad)
        z, onehot = logits + bias, np.eye(4)[y_all[idx]]
        assert float(loss) == pytest.approx(-np.sum(onehot * log_softmax(z)), rel=1e-12)
        assert int(correct) == np.sum(np.argmax(z, axis=1) == y_all[idx])
        want = -0.5 * (np.exp(log_softmax(z)) - onehot)
        np.testing.assert_allclose(np.asarray(delta_t).T, want, rtol=1e-12)
        np.testing.assert_allclose(bias_grad, want.sum(axis=0), rtol=1e-12, atol=1e-15)


def test_running_sums_on_a_device_add_up_as_on_the_host() -> None:
    """Device sums are float64 (by pairs with an accumulate kernel): the same figures as the
    host's Python floats, and a step's loss is read every DEVICE_LOSS_CHECK steps only."""
    from trainer.core.step.sums import DEVICE_LOSS_CHECK, RunningSums

    numpy = backends.load("numpy")
    device = dataclasses.replace(numpy, on_host=False, kernels=backends.Kernels())
    paired = dataclasses.replace(device, kernels=one_pass(numpy.kernels))
    like = np.zeros(1)
    sums = [RunningSums(b, like, 1.5, 2.0) for b in (numpy, device, paired)]
    rng = np.random.default_rng(0)
    steps = 3 * DEVICE_LOSS_CHECK + 7
    total_loss, total_correct = 1.5, 2.0
    for step in range(1, steps + 1):
        loss, correct = np.float32(rng.random() * 30), np.int64(rng.integers(0, 33))
        total_loss, total_correct = total_loss + float(loss), total_correct + int(correct)
        read = [s.add(loss, correct, step, step == steps) for s in sums]
        assert read[0] == float(loss)
        want = float(loss) if step % DEVICE_LOSS_CHECK == 0 or step == steps else None
        assert read[1] == read[2] == want
    host = sums[0].values()
    assert sums[1].values() == host and sums[2].values() == host  # float64 all: exact
    assert host == (total_loss, total_correct)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_buffers_start_on_a_cache_line(dtype: str) -> None:
    """Flat parameter buffers and per-batch buffers start 64-byte aligned on NumPy, whatever was
    allocated before them (NumPy alone promises 16), and hold what they were given."""
    from trainer.core.buffers import ALIGN_BYTES, BatchBuffers, flatten

    arrays = [np.arange(7 * 5, dtype=dtype).reshape(7, 5), np.arange(3, dtype=dtype)]
    for pad in range(1, 9):  # shift where the allocator's next block starts
        _spacer = np.empty(pad * 2, dtype=np.float32)  # noqa: F841
        flat, views = flatten(np, arrays, [1, 0])
        assert flat.ctypes.data % ALIGN_BYTES == 0
        for view, array in zip(views, arrays, strict=True):
            assert np.array_equal(view, array) and view.base is not None
        assert np.array_equal(flat, np.concatenate([arrays[1], arrays[0].ravel()]))
        bufs = BatchBuffers.empty(np, [20, 12, 4], 32, arrays[0], transposed=True)
        for b in [bufs.x, *bufs.outs, *bufs.downs, *bufs.scratch]:
            assert b.ctypes.data % ALIGN_BYTES == 0 and b.flags.c_contiguous
        assert bufs.outs[-1].shape == (4, 32) and bufs.x.shape == (32, 20)
