"""The compiled step (jax): the plain step's math traced once and run as loops of steps on the
device, against the float64 reference of test_step, NumPy's runs, and itself (seeds, resumes,
where its stretches of steps are cut)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import _load_or_skip, make_dataset
from test_recipe import adam_reference
from test_recipe import config as recipe_config
from test_resume import config as resume_config
from test_resume import data as resume_data
from test_resume import train_until_checkpointed
from test_step import VARIANTS, reference_steps
from test_step import config as step_config

from trainer import backends
from trainer.core.compiled import CompiledStep
from trainer.core.config import Config
from trainer.core.network import init_params
from trainer.data.dataset import Dataset
from trainer.run.checkpoint import LoopState, load_checkpoint
from trainer.run.results import Callbacks, DivergedError, Interrupted, StepInfo
from trainer.run.train import train


@pytest.fixture(scope="module")
def jax() -> backends.Backend:
    be = _load_or_skip("jax", "cpu")
    assert be.compiler is not None, "the jax backend must offer its compiler"
    return be


def compiled(be: backends.Backend, cfg: Config, host: list[np.ndarray]) -> CompiledStep:
    return CompiledStep(cfg, be.xp, [be.asarray(p) for p in host],
                        [be.asarray(np.zeros_like(p)) for p in host], be.compiler)


def check_reference(cfg: Config, make: Callable[[list[np.ndarray]], Any],
                    asarray: Callable[[Any], Any], to_numpy: Callable[[Any], Any]) -> None:
    """A stretch step (CompiledStep, FusedStep) made by `make` from the initial weights, against
    test_step's float64 reference: two full batches in one stretch, then the partial last one
    alone (on jax its own compile)."""
    rng = np.random.default_rng(3)
    x, labels = rng.normal(0, 1, (10, 6)), rng.integers(0, 4, 10)
    perm = np.array([0, 3, 5, 7, 1, 2, 9, 4, 8, 6])  # batches of 4, the last of 2
    batches = [perm[:4], perm[4:8], perm[8:]]
    host = init_params(cfg.sizes, cfg.activations, "xavier", rng, "float64")
    want_params, want_losses = reference_steps(cfg, host, x, np.eye(4)[labels], batches,
                                               cfg.learning_rate)
    step = make(host)
    step.begin_epoch(asarray(x), asarray(labels), asarray(perm), [cfg.learning_rate] * 3, 0)
    loss, correct, broke, last = step.run(0, 2, 0.0, 0.0)
    assert broke is None and step.global_step == 2
    assert loss == pytest.approx(sum(want_losses[:2]), rel=1e-12)
    assert last == pytest.approx(want_losses[1], rel=1e-12)
    loss, correct, broke, last = step.run(2, 1, loss, correct)
    assert loss == pytest.approx(sum(want_losses), rel=1e-12) and step.global_step == 3
    assert 0 <= correct <= 10 and correct == int(correct)
    for got, want in zip(step.params, want_params, strict=True):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-11, atol=1e-13)


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
    step.begin_epoch(jax.asarray(x), jax.asarray(labels), jax.asarray(perm), [0.01] * 3, 0)
    step.run(0, 1, 0.0, 0.0)  # one stretch a step: Adam's t must follow the global step
    step.run(1, 1, 0.0, 0.0)
    step.run(2, 1, 0.0, 0.0)
    for got, w in zip(step.params, want, strict=True):
        np.testing.assert_allclose(jax.to_numpy(got), w, rtol=1e-10, atol=1e-12)


def check_seeds(be: backends.Backend, cfg: Config, data: Callable[[], Dataset]) -> None:
    """The same seed gives the same bits, another seed other bits."""
    a, b = train(cfg, data(), be), train(cfg, data(), be)
    c = train(cfg.replace(seed=1), data(), be)
    assert all(np.array_equal(x, y) for x, y in zip(a.params, b.params, strict=True))
    assert [h.loss for h in a.history] == [h.loss for h in b.history]
    assert not np.array_equal(a.params[0], c.params[0])


def check_stretches(be: backends.Backend, cfg: Config, data: Callable[[], Dataset]) -> None:
    """Checkpoints every 3 steps cut every epoch of a 2-epoch run into stretches of 3: the same
    bits as whole epochs, and the checkpoints fall on those steps."""
    straight = train(cfg, data(), be)
    states: list[LoopState] = []
    cut = train(cfg, data(), be, callbacks=Callbacks(checkpoint=states.append,
                                                     checkpoint_every=3))
    for a, b in zip(straight.params, cut.params, strict=True):
        assert np.array_equal(a, b)
    assert [h.loss for h in straight.history] == [h.loss for h in cut.history]
    steps = -(-straight.train_samples // cfg.batch_size)
    want = [(e, s) for e in (1, 2) for s in range(1, steps) if (s + (e - 1) * steps) % 3 == 0]
    want = sorted(want + [(2, 0), (3, 0)])
    assert sorted((s.epoch, s.step) for s in states) == want


def check_resume(be: backends.Backend, cfg: Config, data: Callable[[], Dataset],
                 folder: Path) -> None:
    """Stopped mid-epoch 2 (checkpoints every 2 steps) and resumed: bitwise the straight run."""
    from trainer.run.checkpoint import save_checkpoint

    straight = train(cfg, data(), be)
    saved: list[tuple[int, int]] = []

    def checkpoint(state: LoopState) -> None:
        saved.append((state.epoch, state.step))
        save_checkpoint(folder, state)

    def stop_requested() -> int | None:  # asked after every stretch and at every epoch's end
        return signal.SIGINT if any(e == 2 and s > 0 for e, s in saved) else None

    with pytest.raises(Interrupted) as caught:  # after epoch 2's second stretch
        train(cfg, data(), be, callbacks=Callbacks(
            checkpoint=checkpoint, stop_requested=stop_requested, checkpoint_every=2))
    state = load_checkpoint(folder)
    assert (state.epoch, state.step) == (caught.value.epoch, caught.value.step)
    assert state.epoch == 2 and state.step > saved[-2][1] > 0  # the stretch after a checkpoint
    resumed = train(cfg, data(), be, resume=state)
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert np.array_equal(a, b)
    assert [h.loss for h in straight.history] == [h.loss for h in resumed.history]
    assert straight.test_accuracy == resumed.test_accuracy


def check_divergence(be: backends.Backend, dtype: str) -> None:
    """A learning rate that blows up stops at NumPy's step, with NumPy's message."""
    cfg = Config.from_dict({
        "layers": [{"nodes": 20, "activation": "relu"}, {"nodes": 8, "activation": "softmax"},
                   {"nodes": 4}], "learning_rate": 1e6, "batch_size": 10, "epochs": 3,
        "dtype": dtype})
    caught = []
    for backend in ("numpy", be):
        with pytest.raises(DivergedError) as e:
            train(cfg, make_dataset(n_train=200), backend)
        caught.append(e.value)
    assert (caught[1].epoch, caught[1].step) == (caught[0].epoch, caught[0].step)
    assert str(caught[1]) == str(caught[0])


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
    cfg = resume_config("adam", epochs=3)
    result = train(cfg, resume_data(), jax)
    first, *rest = (h.seconds for h in result.history)
    assert first > 3 * max(rest)  # tracing and compiling the loop: in epoch 1's time
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
