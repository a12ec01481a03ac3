"""The CuPy step orchestrated on the CPU: a stand-in for the CuPy backend on NumPy arrays whose
kernels are backends/cupy.py's, built on the CUDA kernels compiled by tests/cuda_on_cpu.py,
trains the default config and a dropout + Nesterov one (configs/fashion.json's network) in
float64 for 60 steps, against NumPy's plain step: the real kernel math, in the real order of
the CuPy step, with cupy.py's own wrappers. cuBLAS is NumPy's matmul here. What this does not
see is said in tests/test_cuda_on_cpu.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cuda_on_cpu
import cupy_on_cpu
import numpy as np
import pytest
from array_api_compat import numpy as np_xp
from conftest import make_dataset
from threadpoolctl import threadpool_limits

from trainer import backends
from trainer.core.config import Config
from trainer.core.network import init_params
from trainer.core.step import make_step
from trainer.run.results import RunningSums

pytestmark = pytest.mark.cuda_on_cpu
ROOT = Path(__file__).parent.parent
STEPS = 60
# config -> the CUDA kernels its CuPy step launches at every step (RunningSums: accumulate)
CONFIGS = {
    "trainer/default_config.json": {"trainer_sigmoid_bias", "trainer_softmax_xent_t",
                                    "trainer_sigmoid_grad", "trainer_sgd_update",
                                    "trainer_accumulate"},
    "configs/fashion.json": {"trainer_relu_bias", "trainer_keep_mask", "trainer_softmax_xent_t",
                             "trainer_relu_grad_masked", "trainer_sgd_update",
                             "trainer_accumulate"},
}


@pytest.fixture(scope="module")
def standin() -> backends.Backend:
    return cupy_on_cpu.standin_or_skip()


@pytest.fixture(autouse=True)
def one_blas_thread() -> Iterator[None]:
    """BLAS threads spinning between GEMMs would take the cores from a block's 256 threads
    (on 2 busy cores, 2026-12-04: 34 s for these two tests, against 4 s on one BLAS thread)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.mark.parametrize("path", CONFIGS)
def test_the_cupy_step_trains_as_the_plain_step(standin: backends.Backend,
                                                path: str) -> None:
    cfg = Config.from_file(ROOT / path).replace(dtype="float64")
    if path.startswith("configs/"):
        assert cfg.nesterov and any(cfg.dropouts)
    n = STEPS * cfg.batch_size
    data = make_dataset(n_train=n, n_test=1, shape=(28, 28), classes=10, seed=5)
    x, y = data.train_images.reshape(n, -1) / 255.0, data.train_labels.astype(np.int64)
    rng = np.random.default_rng(cfg.seed)
    host = init_params(cfg.sizes, cfg.activations, cfg.init, rng, "float64")
    batches = rng.permutation(n).reshape(STEPS, cfg.batch_size)
    plain = make_step(cfg, np_xp, [p.copy() for p in host], [np.zeros_like(p) for p in host])
    be = standin
    fast = make_step(cfg, be.xp, [be.asarray(p) for p in host],
                     [be.asarray(np.zeros_like(p)) for p in host], be.kernels)
    assert type(fast) is not type(plain)  # the fast step, on the CuPy backend's kernels
    sums = RunningSums(be, be.asarray(host[0]))
    x_device, y_device = be.asarray(x), be.asarray(y)
    before, losses = Counter(cuda_on_cpu.launches), []
    for k, idx in enumerate(batches):
        want_loss, want_correct = plain(x, y, idx, cfg.learning_rate)
        loss, correct = fast(x_device, y_device, be.asarray(idx), cfg.learning_rate)
        sums.add(loss, correct, k + 1, k == STEPS - 1)
        np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-10,
                                   err_msg=f"step {k}")
        assert int(correct) == int(want_correct), f"step {k}"
        losses.append(float(want_loss))
    launched = Counter(cuda_on_cpu.launches) - before
    assert {name for name, count in launched.items() if count >= STEPS} == CONFIGS[path]
    for got, want in zip(fast.params, plain.params, strict=True):
        np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(sums.values()[0], sum(losses), rtol=1e-12)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])  # it trains
