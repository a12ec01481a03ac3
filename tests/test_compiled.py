"""The compiled step (jax): the plain step's math traced once and run as loops of steps on the
device, against the float64 reference of test_step, NumPy's runs, and itself (seeds, resumes,
where its stretches of steps are cut)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import _load_or_skip
from helpers import (
    VARIANTS,
    recipe_config,
    resume_config,
    resume_data,
    step_config,
    train_until_checkpointed,
)
from references import (
    adam_reference,
    check_divergence,
    check_reference,
    check_resume,
    check_seeds,
    check_stretches,
)

from trainer import backends
from trainer.core.config import Config
from trainer.core.network import init_params
from trainer.core.step import CompiledStep
from trainer.run.checkpoint import load_checkpoint
from trainer.run.results import Callbacks, StepInfo
from trainer.run.train import train


@pytest.fixture(scope="module")
def jax() -> backends.Backend:
    be = _load_or_skip("jax", "cpu")
    assert be.compiler is not None, "the jax backend must offer its compiler"
    return be


def compiled(be: backends.Backend, cfg: Config, host: list[np.ndarray]) -> CompiledStep:
    return CompiledStep(cfg, be.xp, [be.asarray(p) for p in host],
                        [be.asarray(np.zeros_like(p)) for p in host], be.compiler)


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_step_matches_the_reference(jax: backends.Backend, variant: str) -> None:
    cfg = step_config(**VARIANTS[variant])
    check_reference(cfg, lambda host: compiled(jax, cfg, host), jax.asarray, jax.to_numpy)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_compiled_adam_matches_hand_computation(jax: backends.Backend, optimizer: str) -> None:
    cfg = recipe_config(optimizer=optimizer, weight_decay=0.1, beta1=0.8, beta2=0.95)
    rng = np.random.default_rng(0)
    x, labels = rng.normal(0, 1, (9, 6)), rng.integers(0, 3, 9)
    host = init_params(cfg.sizes, cfg.activations, "xavier", rng, "float64")
    perm = np.arange(9)
    want = adam_reference(cfg, host, x, np.eye(3)[labels], [perm[:4], perm[4:8], perm[8:]],
                          0.01)
    step = compiled(jax, cfg, host)
    step.begin_epoch(jax.asarray(x), jax.asarray(labels), jax.asarray(perm), [0.01] * 3, 0,
                     0.0, 0.0)
    for s in range(3):  # one stretch a step: Adam's t must follow the global step
        step.run(s, 1)
    for got, w in zip(step.params, want, strict=True):
        np.testing.assert_allclose(jax.to_numpy(got), w, rtol=1e-10, atol=1e-12)


def test_same_seed_same_bits_and_another_seed_other_bits(jax: backends.Backend) -> None:
    check_seeds(jax, resume_config("sgd-dropout-shift-val", epochs=2).replace(dtype="float32"),
                resume_data)


@pytest.mark.parametrize("recipe", ["sgd-dropout-shift-val", "adam", "sgd-elastic-shift-val"])
def test_where_the_stretches_end_changes_no_bit(jax: backends.Backend, recipe: str) -> None:
    check_stretches(jax, resume_config(recipe, epochs=2).replace(dtype="float32"), resume_data)


@pytest.mark.parametrize("recipe", ["sgd-dropout-shift-val", "adam", "sgd-elastic-shift-val"])
def test_resume_mid_epoch_is_bitwise_equal(jax: backends.Backend, recipe: str,
                                           tmp_path: Path) -> None:
    check_resume(jax, resume_config(recipe).replace(dtype="float32"), resume_data, tmp_path)


def test_parity_with_adam_schedule_and_best_weights(jax: backends.Backend) -> None:
    """Adam with a warm-up and cosine schedule (a learning rate per step in the stretch), a
    validation split whose best epoch's weights are put back at the end."""
    cfg = resume_config("adam", epochs=3).replace(
        dtype="float64", validation_split=0.2, restore_best_weights=True)
    ref, got = train(cfg, resume_data(), "numpy"), train(cfg, resume_data(), jax)
    assert got.best_epoch == ref.best_epoch is not None
    for r, g in zip(ref.params, got.params, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    assert [h.learning_rate for h in got.history] == [h.learning_rate for h in ref.history]


@pytest.mark.parametrize("schedule", [{"type": "cosine", "warmup_epochs": 1},
                                      {"type": "step", "step_epochs": 1, "gamma": 0.5}])
def test_parity_with_an_sgd_schedule(jax: backends.Backend, schedule: dict) -> None:
    """SGD folds each step's own rate into its delta (a scale table): under a schedule every
    step of a stretch has another one, and none may take the stretch's first."""
    cfg = resume_config("sgd-dropout-shift-val", epochs=3).replace(
        dtype="float64", lr_schedule=schedule)
    ref, got = train(cfg, resume_data(), "numpy"), train(cfg, resume_data(), jax)
    for r, g in zip(ref.params, got.params, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    assert [h.loss for h in got.history] == pytest.approx([h.loss for h in ref.history],
                                                          rel=1e-10)


def test_the_bars_see_every_stretch_and_the_epochs_figures(jax: backends.Backend) -> None:
    seen: list[tuple[int, int, int, tuple[float, float]]] = []

    def on_step(info: StepInfo) -> None:
        seen.append((info.epoch, info.step, info.seen, info.running()))

    cfg = resume_config("adam", epochs=2)
    result = train(cfg, resume_data(), jax,
                   callbacks=Callbacks(on_step=on_step, checkpoint_every=4))
    steps = -(-result.train_samples // cfg.batch_size)
    for epoch, stats in zip((1, 2), result.history, strict=True):
        mine = [s for s in seen if s[0] == epoch]
        done = [s[1] for s in mine]
        assert done == sorted(set(done)) and done[-1] == steps  # each stretch's end, once
        # every 4th global step ends a stretch (--checkpoint-every cuts them)
        assert {s for s in range(1, steps) if (s + (epoch - 1) * steps) % 4 == 0} <= set(done)
        assert [s[2] for s in mine] == [min(d * cfg.batch_size, result.train_samples)
                                        for d in done]
        assert mine[-1][3][0] == pytest.approx(stats.loss, rel=1e-12)
        assert mine[-1][3][1] == pytest.approx(stats.train_accuracy, rel=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_divergence_stops_at_the_same_step_as_numpy(jax: backends.Backend, dtype: str) -> None:
    check_divergence(jax, dtype)


def test_compile_time_is_in_the_first_epoch_and_the_total(jax: backends.Backend) -> None:
    """The compiled loop's first call (which traces and compiles it) is timed in epoch 1: here
    a compiler whose first call takes 0.5 s longer, so that no timing of the machine matters."""
    import dataclasses
    import time

    def slow_first_jit(fn, **kwargs):  # noqa: ANN001, ANN202 - Compiler.jit's stand-in
        compiled, calls = jax.compiler.jit(fn, **kwargs), []

        def call(*args):  # noqa: ANN002, ANN202
            if not calls:
                calls.append(time.sleep(0.5))
            return compiled(*args)
        return call

    slow = dataclasses.replace(jax, compiler=dataclasses.replace(jax.compiler, jit=slow_first_jit))
    result = train(resume_config("adam", epochs=3), resume_data(), slow)
    first, *rest = (h.seconds for h in result.history)
    assert first >= 0.5
    assert result.total_seconds >= first + sum(rest)


def test_jax_refuses_devices_it_does_not_have(jax: backends.Backend) -> None:
    with pytest.raises(ValueError, match="not a device"):
        backends.load("jax", "banana")
    if "cuda:0" not in jax.devices:
        with pytest.raises(ImportError, match="CUDA"):
            backends.load("jax", "cuda")
        assert backends.load("jax").device_name == "cpu"  # JAX's default: here the CPU
    assert backends.status("jax").available


@pytest.mark.slow
def test_ctrl_c_on_jax_checkpoints_and_resumes(jax: backends.Backend, idx_dir: Path,
                                               tmp_path: Path) -> None:
    """A real SIGINT arrives while a stretch runs on the device: it is heard after that
    stretch, the checkpoint is written, and the resumed run ends like an uninterrupted one."""
    run_dir = tmp_path / "run"
    common = ["--data-dir", str(idx_dir), "--backend", "jax", "-q"]
    cmd = [sys.executable, "-m", "trainer", "train", *common, "--run-dir", str(run_dir),
           "--epochs", "40", "--batch-size", "4", "--checkpoint-every", "50"]
    proc = train_until_checkpointed(cmd, run_dir, wait=120)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    state = load_checkpoint(run_dir)
    resumed = subprocess.run([sys.executable, "-m", "trainer", "train", "--resume",
                              str(run_dir), "--data-dir", str(idx_dir), "--backend", "jax",
                              "-q", "--json"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["epochs"][-1]["epoch"] == 40 and state.epoch <= 40
    straight = subprocess.run([sys.executable, "-m", "trainer", "train", *common, "--epochs",
                               "40", "--batch-size", "4", "--run-dir", str(tmp_path / "b"),
                               "--json"], capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    def figures(epochs: list[dict]) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]

    assert figures(json.loads(straight.stdout)["epochs"]) == figures(report["epochs"])
