"""The numba backend's elastic kernel (backends/numba_elastic.py): the same bits as the
array-API warp (trainer/core/elastic.py ElasticWarp.warp) and the numpy kernel, in float32 and
float64, with and without rotation and scaling, for every batch size and epoch; no fused
multiply-add in its compiled code; and a run on the numba backend that warps with it trains to
NumPy's very bits."""

from __future__ import annotations

import platform
import re

import numpy as np
import pytest
from conftest import _load_or_skip, make_dataset

from trainer import backends
from trainer.core.augment import Shifter
from trainer.core.config import Config
from trainer.core.elastic import ElasticWarp
from trainer.core.step import select_step
from trainer.run.train import train

numba_elastic = pytest.importorskip("trainer.backends.numba_elastic")

SHAPE = (9, 11)  # not square: rows and columns must not be mixed up
IMAGES = np.random.default_rng(5).random((40, *SHAPE))
# small fields; large ones (sources beyond the frame: clipped); turned and scaled
OPTIONS = {
    "plain": {"alpha": 6.0, "sigma": 1.5},
    "clipped": {"alpha": 60.0, "sigma": 1.0},
    "turned": {"alpha": 6.0, "sigma": 1.5, "rotate": 25.0, "scale": 0.3},
}


@pytest.fixture(scope="module")
def numba() -> backends.Backend:
    return _load_or_skip("numba")


def make_warp(dtype: str, kernel=None, hash_kernel=None, **options) -> ElasticWarp:
    settings = {"rotate": 0.0, "scale": 0.0} | options
    return ElasticWarp(np, np.ascontiguousarray, SHAPE, background=-0.5, seed=7,
                       dtype=getattr(np, dtype), kernel=kernel, hash_kernel=hash_kernel,
                       **settings)


def batches(n: int, size: int, seed: int) -> list[np.ndarray]:
    """An epoch's batches of a shuffled n, the last one partial where size does not divide n."""
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[lo:lo + size] for lo in range(0, n, size)]


def counting(monkeypatch: pytest.MonkeyPatch, kernel: type) -> list[int]:
    """The batch sizes each call of `kernel` gets from now on."""
    calls: list[int] = []
    original = kernel.__call__

    def counted(self, x, *args):  # noqa: ANN001, ANN002, ANN202
        calls.append(x.shape[0])
        return original(self, x, *args)
    monkeypatch.setattr(kernel, "__call__", counted)
    return calls


def test_the_numba_backend_warps_and_shifts_with_its_own_kernels(
        numba: backends.Backend) -> None:
    assert numba.kernels.elastic is numba_elastic.ElasticKernel
    assert numba.kernels.shift is numba_elastic.ShiftKernel
    numpy_kernels = backends.load("numpy").kernels
    assert numpy_kernels.elastic is not numba_elastic.ElasticKernel
    assert numpy_kernels.shift is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_the_numba_kernel_has_the_reference_bits(option: str, dtype: str,
                                                 numba: backends.Backend,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Against ElasticWarp.warp (array-API code, Python's hash) and the numpy kernel: several
    epochs, batch sizes 16 and 6 with their partial last batches, one kernel throughout (its
    buffers reused from one size to the next)."""
    options = OPTIONS[option]
    plain = make_warp(dtype, **options)
    numpy_kernel = make_warp(dtype, backends.load("numpy").kernels.elastic, **options)
    fast = make_warp(dtype, numba.kernels.elastic, **options)
    calls = counting(monkeypatch, numba_elastic.ElasticKernel)
    images = IMAGES.astype(dtype).reshape(len(IMAGES), -1)
    for epoch in (1, 2, 9):
        for warp in (plain, numpy_kernel, fast):
            warp.use(epoch)
        for size in (16, 6):
            for idx in batches(len(IMAGES), size, seed=epoch * size):
                x = np.ascontiguousarray(images[idx])
                want = plain(x, idx)
                got = fast(x, idx)
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want)
                np.testing.assert_array_equal(got, numpy_kernel(x, idx))
                assert not np.allclose(got, x, atol=0.05)  # it does move the pixels
    # `fast` warped with it, the partial batches too
    assert len(calls) == 3 * (3 + 7) and 8 in calls and 4 in calls
    if option == "clipped":  # some sources lie beyond the frame, and were clipped
        src_r, src_c = plain.sources(np.arange(len(IMAGES)), getattr(np, dtype), plain.key)
        assert src_r.min() < 0 and src_c.max() > SHAPE[1] + 1


def test_the_mnist_recipes_warp_has_the_reference_bits(numba: backends.Backend) -> None:
    """configs/mnist-99.3.json's warp on 28x28 images, a batch of 128 then a partial one."""
    rng = np.random.default_rng(0)
    images = rng.random((300, 784)).astype(np.float32)
    shape = (28, 28)
    made = [ElasticWarp(np, np.ascontiguousarray, shape, alpha=34.0, sigma=4.0, rotate=0.0,
                        scale=0.0, background=-0.42, seed=0, dtype=np.float32, kernel=k)
            for k in (None, numba.kernels.elastic)]
    for warp in made:
        warp.use(3)
    for idx in (np.arange(128) * 2 + 1, np.arange(44)):
        x = np.ascontiguousarray(images[idx])
        np.testing.assert_array_equal(made[1](x, idx), made[0](x, idx))


def test_no_fused_multiply_add_in_the_compiled_passes(numba: backends.Backend) -> None:
    """Contracting a * b + c into one rounding would change the bits: numba does so only under
    fastmath. The passes' LLVM code has no fast-math flags and no fma; on x86 no FMA
    instruction either."""
    for dtype in ("float32", "float64"):
        for options in (OPTIONS["plain"], OPTIONS["turned"]):
            warp = make_warp(dtype, numba.kernels.elastic, **options)
            warp.use(1)
            idx = np.arange(3)
            warp(np.ascontiguousarray(IMAGES[:3].reshape(3, -1).astype(dtype)), idx)
    passes = (numba_elastic.noise_pass, numba_elastic.pad_pass, numba_elastic.sample_pass)
    for compiled in passes:
        assert compiled.signatures, f"{compiled.__name__} was not compiled"
        for llvm in compiled.inspect_llvm().values():
            assert not re.search(r"\bf(add|sub|mul)\s+(fast|contract|reassoc)", llvm)
            assert "llvm.fma" not in llvm and "llvm.fmuladd" not in llvm
        if platform.machine() in ("x86_64", "AMD64"):
            for asm in compiled.inspect_asm().values():
                assert not re.search(r"\bvf(n)?m(add|sub)", asm)
    sample = numba_elastic.sample_pass.inspect_llvm()
    assert any("fmul" in llvm for llvm in sample.values())  # the search sees the arithmetic


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_numba_shift_has_the_reference_bits(dtype: str, numba: backends.Backend,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Against augment.shift's array-API gathers: shifts up to 2 on 9x11 images (pixels from
    the background on every side), two epochs' draws, batches of 16 and 6 with partial ones."""
    made = [Shifter(np, np.ascontiguousarray, SHAPE, 2, -0.5, getattr(np, dtype), kernel=k)
            for k in (None, numba.kernels.shift)]
    calls = counting(monkeypatch, numba_elastic.ShiftKernel)
    images = IMAGES.astype(dtype).reshape(len(IMAGES), -1)
    for epoch in (1, 2):
        ids = made[0].draw(np.random.default_rng(epoch), len(IMAGES))
        for shifter in made:
            shifter.use(ids)
        for size in (16, 6):
            for idx in batches(len(IMAGES), size, seed=epoch + size):
                x = np.ascontiguousarray(images[idx])
                want = made[0](x, idx)
                got = made[1](x, idx)
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)
                assert (got == np.asarray(-0.5, dtype)).any()  # the background came in
    # made[1] shifted with it, the partial batches too
    assert len(calls) == 2 * (3 + 7) and 8 in calls and 4 in calls


ELASTIC = {"shift": 1, "elastic_alpha": 4.0, "elastic_sigma": 1.5, "rotate": 8.0, "scale": 0.1}


def uncovered_config(dtype: str, augment: dict) -> Config:
    """A config numba's fused kernel does not train (a sigmoid output with mse): both backends
    take NumPy's step, and only the warp is other code."""
    return Config.from_dict({
        "layers": [{"nodes": 36, "activation": "relu", "dropout": 0.1},
                   {"nodes": 16, "activation": "sigmoid"}, {"nodes": 4}],
        "loss": "mse", "learning_rate": 0.05, "momentum": 0.9, "nesterov": True,
        "batch_size": 16, "epochs": 2, "dtype": dtype, "augment": augment,
        "validation_split": 0.1})


@pytest.mark.parametrize(("dtype", "augment"), [("float32", ELASTIC), ("float64", ELASTIC),
                                                ("float32", {"shift": 2})],
                         ids=["elastic-float32", "elastic-float64", "shift-float32"])
def test_a_numba_run_that_augments_has_numpys_bits(dtype: str, augment: dict,
                                                   numba: backends.Backend,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """180 training images in batches of 16: a partial last batch each epoch."""
    data = make_dataset(n_train=200, shape=(6, 6), classes=4)
    cfg = uncovered_config(dtype, augment)
    assert select_step(cfg, numba).fallback is not None  # both train with NumPy's step
    warps = counting(monkeypatch, numba_elastic.ElasticKernel)
    shifts = counting(monkeypatch, numba_elastic.ShiftKernel)
    ref = train(cfg, data, "numpy")
    assert warps == shifts == []  # numpy augments with its own code
    got = train(cfg, data, numba)
    # every batch of both epochs, the partial one too
    assert len(shifts) == 2 * 12 and 4 in shifts
    assert warps == (shifts if "elastic_alpha" in augment else [])
    plain = train(cfg.replace(augment={"shift": 0}), data, "numpy")
    assert not np.allclose(plain.params[0], ref.params[0])  # the augmentation was on
    for r, g in zip(ref.params, got.params, strict=True):
        np.testing.assert_array_equal(g, r)
    np.testing.assert_array_equal(got.test_predictions, ref.test_predictions)
