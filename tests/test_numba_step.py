"""The numba backend's fused step (backends/numba_step.py, trainer/core/step/fused.py): its exp and
tanh against NumPy's in float64, its steps against the plain float64 reference of test_step,
NumPy's runs, and itself (seeds, resumes, where its stretches of steps are cut)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import _load_or_skip, make_dataset
from helpers import covered_config, run, step_config, write_config
from references import check_divergence, check_reference, check_resume, check_seeds, check_stretches

from trainer import backends
from trainer.core.config import Config
from trainer.core.network import init_params
from trainer.core.step import FlatStep, FusedStep, unsupported
from trainer.run.loop import Run
from trainer.run.results import Callbacks, Engine
from trainer.run.train import train

# the kinds of network the kernel covers (test_step's layers are sigmoid, tanh, softmax), each
# of its features on its own and the recipes' mixes
DROPOUT = [{"nodes": 6, "activation": "sigmoid", "dropout": 0.2},
           {"nodes": 5, "activation": "tanh", "dropout": 0.5},
           {"nodes": 3, "activation": "softmax", "dropout": 0.3}, {"nodes": 4}]
COVERED = {
    "sgd": {},
    "relu-identity-mean": {"loss_reduction": "mean",
                           "layers": [{"nodes": 6, "activation": "relu"},
                                      {"nodes": 5, "activation": "identity"},
                                      {"nodes": 3, "activation": "softmax"}, {"nodes": 4}]},
    "one-layer": {"layers": [{"nodes": 6, "activation": "softmax"}, {"nodes": 4}]},
    "nesterov": {"nesterov": True},
    "l2": {"regularization_type": "L2", "regularization_rate": 0.05},
    "l1": {"regularization_type": "L1", "regularization_rate": 0.05},
    "l2-nesterov": {"nesterov": True, "regularization_type": "L2", "regularization_rate": 0.05},
    "leaky-relu": {"layers": [{"nodes": 6, "activation": "leaky_relu"},
                              {"nodes": 5, "activation": "relu"},
                              {"nodes": 3, "activation": "softmax"}, {"nodes": 4}]},
    "dropout": {"layers": DROPOUT},
    "dropout-nesterov-mean": {"layers": DROPOUT, "nesterov": True, "loss_reduction": "mean"},
    "adam": {"optimizer": "adam", "learning_rate": 0.01},
    "adam-l1-dropout": {"optimizer": "adam", "learning_rate": 0.01, "layers": DROPOUT,
                        "regularization_type": "L1", "regularization_rate": 0.05},
    "adamw-mean": {"optimizer": "adamw", "learning_rate": 0.01, "weight_decay": 0.1,
                   "loss_reduction": "mean"},
}
# small networks with the recipes' features (make_dataset's 4x5 images), for the checks
# against itself and against NumPy's runs
RECIPE_LAYERS = [{"nodes": 20, "activation": "relu", "dropout": 0.1},
                 {"nodes": 16, "activation": "leaky_relu", "dropout": 0.2},
                 {"nodes": 12, "activation": "softmax", "dropout": 0.2}, {"nodes": 4}]
RECIPES = {
    "nesterov-dropout-l2-mean": {
        "layers": RECIPE_LAYERS, "nesterov": True, "loss_reduction": "mean",
        "regularization_type": "L2", "regularization_rate": 0.001, "learning_rate": 0.1,
        "lr_schedule": {"type": "cosine", "warmup_epochs": 1}},
    "adamw-dropout-augmented": {
        "layers": RECIPE_LAYERS, "optimizer": "adamw", "learning_rate": 0.003,
        "weight_decay": 0.01, "augment": {"shift": 1, "elastic_alpha": 3.0,
                                          "elastic_sigma": 1.5, "rotate": 5.0}},
    "nesterov-augmented-l1": {
        "nesterov": True, "regularization_type": "L1", "regularization_rate": 0.0005,
        "augment": {"shift": 1, "elastic_alpha": 3.0, "elastic_sigma": 1.5}},
}


@pytest.fixture(scope="module")
def numba() -> backends.Backend:
    be = _load_or_skip("numba")
    assert be.fused is not None, "the numba backend must offer its fused kernel"
    return be


def fused(be: backends.Backend, cfg: Config, host: list[np.ndarray]) -> FusedStep:
    return FusedStep(cfg, be.xp, [p.copy() for p in host], [np.zeros_like(p) for p in host],
                     be.fused(cfg.dtype))


def test_exp_and_tanh_match_numpy(numba: backends.Backend) -> None:
    """The kernel's own exp and tanh (Cephes' polynomials) against NumPy's: a few ulps."""
    from numba import njit

    from trainer.backends.numba_math import EXP_FLOOR32, EXP_FLOOR64, vexp, vtanh

    @njit(error_model="numpy")
    def apply(x: np.ndarray, out_exp: np.ndarray, out_tanh: np.ndarray) -> None:
        for i in range(x.shape[0]):
            out_exp[i] = vexp(x[i])
            out_tanh[i] = vtanh(x[i])

    rng = np.random.default_rng(0)
    for dtype, floor, ulps in ((np.float64, EXP_FLOOR64, 4), (np.float32, EXP_FLOOR32, 4)):
        x = np.concatenate([rng.uniform(-30, 30, 20000), rng.uniform(-1, 1, 20000),
                            rng.uniform(-1e-3, 1e-3, 1000), [0.0, 0.625, -0.625, 40.0]])
        x = np.concatenate([x, rng.uniform(floor, 80, 5000)]).astype(dtype)
        e, t = np.empty_like(x), np.empty_like(x)
        apply(x, e, t)
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(e, np.exp(x.astype(np.float64)), rtol=ulps * eps, atol=0)
        np.testing.assert_allclose(t, np.tanh(x.astype(np.float64)), rtol=ulps * eps, atol=0)
        below = np.asarray([floor - 1, floor - 300], dtype=dtype)
        apply(below, e[:2], t[:2])
        assert list(e[:2]) == [0.0, 0.0]  # no denormals for the GEMMs


@pytest.mark.parametrize("variant", COVERED)
def test_fused_step_matches_the_reference(numba: backends.Backend, variant: str) -> None:
    cfg = step_config(**COVERED[variant])
    assert unsupported(cfg) is None
    check_reference(cfg, lambda host: fused(numba, cfg, host), np.asarray, np.asarray)


def test_correct_counts_the_rows_whose_true_class_is_largest(numba: backends.Backend) -> None:
    cfg = step_config(**COVERED["one-layer"])
    rng = np.random.default_rng(4)
    x, labels = rng.normal(0, 1, (12, 6)), rng.integers(0, 4, 12)
    host = init_params(cfg.sizes, cfg.activations, "xavier", rng, "float64")
    want = int(np.sum(np.argmax(x @ host[0] + host[1], axis=1) == labels))
    step = fused(numba, cfg, host)
    step.begin_epoch(x, labels, np.arange(12), [0.0] * 3, 0, 0.0, 0.0)  # rate 0: weights stay
    assert step.run(0, 3) is None and step.sums.correct == want


@pytest.mark.parametrize("recipe", ["plain", *RECIPES])
def test_float64_weights_match_the_plain_step_after_60_steps(numba: backends.Backend,
                                                             recipe: str) -> None:
    """Against NumPy's plain step (the reference math, one array operation at a time, with the
    array-API dropout masks and augmentation), with a learning-rate schedule (a rate per step)
    and the best epoch's weights put back."""
    data = make_dataset(n_train=400)  # 320 after the split: 20 steps per epoch, 3 epochs
    cfg = covered_config(**{"validation_split": 0.2, "restore_best_weights": True, "epochs": 3,
                            "lr_schedule": {"type": "cosine", "warmup_epochs": 1}}
                         | RECIPES.get(recipe, {}))
    ref = train(cfg, data, "numpy", engine=Engine(fast=False))
    got = train(cfg, data, numba)
    step = _run(cfg, data, numba).step
    assert isinstance(step, FusedStep) and (step.augment is not None) == bool(
        cfg.augment.shift)
    for r, g in zip(ref.params, got.params, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    assert got.history[-1].loss == pytest.approx(ref.history[-1].loss, rel=1e-10)
    assert [h.train_accuracy for h in got.history] == [h.train_accuracy for h in ref.history]
    assert got.best_epoch == ref.best_epoch is not None


def test_float32_weights_match_numpy_within_dtype_tolerance(numba: backends.Backend) -> None:
    data = make_dataset(n_train=400)
    cfg = covered_config(dtype="float32")
    ref, got = train(cfg, data, "numpy"), train(cfg, data, numba)
    tol = 100 * np.finfo(np.float32).eps  # test_parity's bound
    for r, g in zip(ref.params, got.params, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * np.max(np.abs(r)))


def _run(cfg: Config, data, be: backends.Backend) -> Run:
    return Run(cfg, data, be, Engine(), None, Callbacks(), None)


@pytest.mark.parametrize("change", [
    {"loss": "mse"},
    {"layers": [{"nodes": 20, "activation": "softmax", "dropout": 0.1},
                {"nodes": 8, "activation": "softmax"}, {"nodes": 4}]},
])
def test_other_configs_route_to_numpys_step(numba: backends.Backend, change: dict) -> None:
    """What the kernel does not cover runs NumPy's own step, the kind numpy picks (the bits are
    then numpy's by construction: comparing them would compare NumPy with itself)."""
    data = make_dataset(n_train=160)
    cfg = covered_config(dtype="float32", **change)
    assert unsupported(cfg) is not None
    kind = type(_run(cfg, data, numba).step)
    assert kind is type(_run(cfg, data, backends.load("numpy")).step)
    assert kind is not FusedStep and issubclass(kind, FlatStep)


@pytest.mark.parametrize("recipe", ["plain", *RECIPES])
def test_same_seed_same_bits_and_another_seed_other_bits(numba: backends.Backend,
                                                         recipe: str) -> None:
    check_seeds(numba, covered_config(dtype="float32", validation_split=0.2,
                                      **RECIPES.get(recipe, {})), make_dataset)


@pytest.mark.parametrize("recipe", ["plain", *RECIPES])
def test_where_the_stretches_end_changes_no_bit(numba: backends.Backend, recipe: str) -> None:
    check_stretches(numba, covered_config(dtype="float32", **RECIPES.get(recipe, {})),
                    make_dataset)


@pytest.mark.parametrize("recipe", ["plain", *RECIPES])
def test_resume_mid_epoch_is_bitwise_equal(numba: backends.Backend, tmp_path: Path,
                                           recipe: str) -> None:
    check_resume(numba, covered_config(dtype="float32", epochs=3, **RECIPES.get(recipe, {})),
                 make_dataset, tmp_path)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_divergence_stops_at_the_same_step_as_numpy(numba: backends.Backend, dtype: str) -> None:
    check_divergence(numba, dtype)


def test_train_says_which_step_a_numba_run_uses(numba: backends.Backend, idx_dir: Path,
                                                tmp_path: Path) -> None:

    compiled = run("train", write_config(tmp_path, epochs=1), "--data-dir", idx_dir,
                   "--run-dir", tmp_path / "a", "--backend", "numba")
    assert compiled.exit_code == 0, compiled.output
    assert "numba (cpu; whole steps compiled)" in compiled.output
    mse = write_config(tmp_path, "mse", epochs=1, loss="mse")
    numpy_step = run("train", mse, "--data-dir", idx_dir, "--run-dir", tmp_path / "b",
                     "--backend", "numba")
    assert numpy_step.exit_code == 0, numpy_step.output
    assert ("numba (cpu; NumPy's step: its output is not softmax with cross-entropy)"
            in " ".join(numpy_step.output.split()))


def test_bench_does_not_time_numba_on_configs_its_kernel_does_not_cover(
        numba: backends.Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """There numba trains with NumPy's step: its row would be NumPy's time under another name
    (and could be named the fastest of ours)."""
    from typer.testing import CliRunner

    from trainer.cli import bench as cli_bench
    from trainer.cli.app import app

    timed: list[list[str]] = []

    def fake_run_bench(cfg, *, targets, **_):  # noqa: ANN001, ANN202 - run_bench's stand-in
        timed.append(list(targets))
        return {"results": [], "fastest": {}, "versions": {}, "machine": {"cpu": {
            "model": "x", "cores": 2, "simd": "AVX2"}}}

    monkeypatch.setattr(cli_bench, "run_bench", fake_run_bench)
    uncovered = tmp_path / "mse.json"
    uncovered.write_text(json.dumps(covered_config(loss="mse").to_dict()))
    args = ["bench", "--backends", "numpy,numba", "--batch-sizes", "32", "--out",
            str(tmp_path / "b.json")]
    result = CliRunner().invoke(app, [*args[:1], str(uncovered), *args[1:]], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert ("numba: not timed: it trains this config with NumPy's step (its output is not "
            "softmax with cross-entropy)") in " ".join(result.output.split())
    covered = CliRunner().invoke(app, args, terminal_width=200)  # the default config
    assert covered.exit_code == 0, covered.output
    assert timed == [["numpy"], ["numpy", "numba"]] and "not timed" not in covered.output
    alone = CliRunner().invoke(app, [*args[:1], str(uncovered), "--backends", "numba"])
    assert alone.exit_code == 2 and "nothing left to time" in alone.output
    # a backend named but not loadable here (cupy without a GPU) is left to its worker to report
    named = CliRunner().invoke(app, [*args[:1], str(uncovered), "--backends", "numba,cupy",
                                     *args[3:]])
    assert named.exit_code == 0, named.output
    assert timed[-1] == ["cupy"]

