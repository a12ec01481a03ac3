"""Runs that survive: resume, signals, divergence, corrupt checkpoints, full disks."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from helpers import RECIPES, resume_config, resume_data, train_until_checkpointed
from safetensors.numpy import load_file
from typer.testing import CliRunner

from trainer.cli.app import app
from trainer.core.config import Config
from trainer.errors import DataError
from trainer.fileio import WriteError
from trainer.run.checkpoint import LATEST, PREVIOUS, LoopState, load_checkpoint, save_checkpoint
from trainer.run.results import Callbacks, DivergedError, Interrupted
from trainer.run.train import train

ROOT = Path(__file__).parent.parent
runner = CliRunner()

@pytest.mark.parametrize("recipe", RECIPES)
def test_resume_after_an_epoch_is_bitwise_equal(recipe: str, tmp_path: Path) -> None:
    cfg, d = resume_config(recipe), resume_data()
    straight = train(cfg, d, "numpy")
    calls = []

    def stop_requested() -> int | None:  # asked once per step and once per epoch end
        calls.append(1)
        return signal.SIGINT if len(calls) >= 16 else None

    with pytest.raises(Interrupted) as caught:  # stopped in epoch 2, after the step in progress
        train(cfg, d, "numpy", callbacks=Callbacks(
            checkpoint=lambda st: save_checkpoint(tmp_path, st), stop_requested=stop_requested))
    state = load_checkpoint(tmp_path)
    assert state.epoch == 2 and state.step > 0  # mid-epoch
    assert (caught.value.epoch, caught.value.step, caught.value.exit_code) == (2, state.step, 130)
    resumed = train(cfg, d, "numpy", resume=state)
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert np.array_equal(a, b)
    assert [h.loss for h in straight.history] == [h.loss for h in resumed.history]
    assert straight.test_accuracy == resumed.test_accuracy


def test_resume_at_an_epoch_boundary_is_bitwise_equal(tmp_path: Path) -> None:
    cfg, d = resume_config("sgd-dropout-shift-val"), resume_data()
    states: list[LoopState] = []
    straight = train(cfg, d, "numpy", callbacks=Callbacks(checkpoint=states.append))
    save_checkpoint(tmp_path, states[1])  # after epoch 2, through a file and back
    resumed = train(cfg, d, "numpy", resume=load_checkpoint(tmp_path))
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert np.array_equal(a, b)


def test_checkpoint_every_n_steps(tmp_path: Path) -> None:
    states: list[LoopState] = []
    train(resume_config("adam", epochs=1), resume_data(), "numpy",
          callbacks=Callbacks(checkpoint=states.append, checkpoint_every=5))
    assert [(s.epoch, s.step) for s in states] == [(1, 5), (1, 10), (2, 0)]


# a network every backend's fast step covers (numba's fused kernel too), 5 steps an epoch, the
# last one partial (200 images in batches of 48)
STOP_BACKENDS = ["numpy", "numba", pytest.param(("jax", "cpu"), id="jax")]
STOP_STEPS, STOP_EPOCHS = 5, 2


@pytest.mark.parametrize("at", range(1, STOP_STEPS * STOP_EPOCHS + 1))
@pytest.mark.parametrize("name", STOP_BACKENDS)
def test_a_stop_at_any_step_checkpoints_there_and_resumes_bitwise(
        name: str | tuple[str, str], at: int, tmp_path: Path) -> None:
    """Stopped after step `at` (the first, the middle ones, an epoch's last, the run's last):
    the checkpoint is there and says where it stopped, and the resumed run is the straight
    one, bit for bit. The run's last step ends it whole instead."""
    from conftest import _load_or_skip

    be = _load_or_skip(*(name if isinstance(name, tuple) else (name,)))
    cfg = Config.from_dict({
        "layers": [{"nodes": 20, "activation": "tanh"}, {"nodes": 12, "activation": "softmax"},
                   {"nodes": 4}],
        "learning_rate": 0.01, "momentum": 0.9, "batch_size": 48, "epochs": STOP_EPOCHS})
    d = make_dataset(n_train=200, n_test=50, shape=(4, 5), classes=4, seed=2)
    straight = train(cfg, d, be)
    done: list[int] = []  # global steps the bars were shown

    def stop_requested() -> int | None:  # asked after each step (or stretch) and epoch end
        return signal.SIGINT if done and done[-1] >= at else None

    # a stretch of steps on jax and numba ends where a checkpoint is due: every `at` steps
    callbacks = Callbacks(
        on_step=lambda i: done.append((i.epoch - 1) * STOP_STEPS + i.step),
        stop_requested=stop_requested, checkpoint=lambda st: save_checkpoint(tmp_path, st),
        checkpoint_every=at)
    if at == STOP_STEPS * STOP_EPOCHS:
        cut = train(cfg, d, be, callbacks=callbacks)
    else:
        with pytest.raises(Interrupted) as caught:
            train(cfg, d, be, callbacks=callbacks)
        state = load_checkpoint(tmp_path)
        assert (state.epoch, state.step) == (caught.value.epoch, caught.value.step)
        assert (state.epoch - 1) * STOP_STEPS + state.step == at
        cut = train(cfg, d, be, resume=state)
    for a, b in zip(straight.params, cut.params, strict=True):
        assert np.array_equal(a, b)
    assert [h.loss for h in straight.history] == [h.loss for h in cut.history]


# --- the checkpoint file ----------------------------------------------------------------------

def small_state(value: float) -> LoopState:
    return LoopState(epoch=3, step=2, params=[np.full((3, 4), value, np.float32)],
                     velocities=[np.zeros((3, 4), np.float32)], rng={"shuffle": {"x": 1}},
                     history=[{"epoch": 1, "loss": 0.5}])


def test_checkpoint_round_trip_and_rotation(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, small_state(1.0))
    save_checkpoint(tmp_path, small_state(2.0))
    assert load_checkpoint(tmp_path).params[0][0, 0] == 2.0
    assert (tmp_path / PREVIOUS).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_corrupt_latest_falls_back_to_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, small_state(1.0))
    save_checkpoint(tmp_path, small_state(2.0))
    blob = bytearray((tmp_path / LATEST).read_bytes())
    blob[-20:-10] = b"\xff" * 10  # overwrite tensor bytes: only the checksum can tell
    (tmp_path / LATEST).write_bytes(bytes(blob))
    warnings: list[str] = []
    state = load_checkpoint(tmp_path, warn=warnings.append)
    assert state.params[0][0, 0] == 1.0
    assert len(warnings) == 1 and "checksum mismatch" in warnings[0]


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, small_state(1.0))
    (tmp_path / LATEST).write_bytes(b"garbage")
    with pytest.raises(DataError, match="no usable checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_disk_full_keeps_the_old_checkpoint(failing: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, small_state(1.0))
    before = (tmp_path / LATEST).read_bytes()

    def enospc(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "fsync":
        monkeypatch.setattr(os, "fsync", enospc)
    else:
        real_fdopen = os.fdopen

        def fdopen(fd, *a, **k):
            f = real_fdopen(fd, *a, **k)
            f.write = enospc
            return f
        monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(WriteError, match="No space left on device"):
        save_checkpoint(tmp_path, small_state(2.0))
    monkeypatch.undo()
    assert (tmp_path / LATEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]


def test_a_poisoned_value_leaves_nothing_behind(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, small_state(1.0))
    before = (tmp_path / LATEST).read_bytes()
    poisoned = small_state(2.0)
    poisoned.loss_sum = float("nan")  # not JSON: refused before a byte is written
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, poisoned)
    poisoned = small_state(2.0)
    poisoned.params = [np.array([object()])]  # not a tensor
    with pytest.raises(Exception, match="object"):  # safetensors refuses it
        save_checkpoint(tmp_path, poisoned)
    assert (tmp_path / LATEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]


WRITER = """
import sys, numpy as np
from trainer.run.checkpoint import LoopState, save_checkpoint
i = 0
while True:
    i += 1
    save_checkpoint(sys.argv[1], LoopState(epoch=i, params=[np.full((300, 300), i, np.float32)]))
"""


@pytest.mark.slow
def test_kill_9_at_random_moments_never_breaks_the_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(0)
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
        deadline = time.time() + 10
        while not (tmp_path / LATEST).exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.15))
        proc.kill()
        proc.wait()
        state = load_checkpoint(tmp_path)  # verifies the checksum
        assert state.params[0][0, 0] == state.epoch


# --- divergence --------------------------------------------------------------------------------

@pytest.mark.parametrize(("loss", "output"), [("cross_entropy", "softmax"), ("mse", "identity")])
def test_huge_learning_rate_stops_at_the_first_broken_loss(loss: str, output: str) -> None:
    cfg = Config.from_dict({
        "layers": [{"nodes": 20, "activation": "relu"}, {"nodes": 8, "activation": output},
                   {"nodes": 4}], "learning_rate": 1e6, "batch_size": 10, "epochs": 3,
        "loss": loss})
    sums: list[float] = []
    with pytest.raises(DivergedError) as caught:
        train(cfg, make_dataset(n_train=200), "numpy", callbacks=Callbacks(
            on_step=lambda info: sums.append(info.running()[0] * info.seen)))
    steps = np.diff([0.0, *sums])  # each reported step's own loss (10 images a step)
    assert np.all(np.isfinite(steps))  # every reported step was still finite
    if loss == "cross_entropy":  # and no cross-entropy had exploded past 1000 nats an image
        assert np.all(steps / 10 <= 1000)
    e = caught.value
    assert (e.epoch, e.step) == (1, len(sums) + 1)  # the very step that broke
    message = str(e)
    assert ("per image" in message) if loss == "cross_entropy" else (
        "the loss is nan" in message or "the loss is inf" in message)
    assert "learning rate 1e+06" in message and "smaller learning_rate" in message


def test_cli_divergence_exits_1_and_marks_metrics(idx_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data-dir", str(idx_dir), "--run-dir", str(run_dir),
                                 "--learning-rate", "1e6", "--epochs", "2", "-q"])
    assert result.exit_code == 1
    assert "diverged in epoch 1" in result.output and "Traceback" not in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["epoch"] == 1


def test_out_of_memory_is_one_clear_message(idx_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.cli.train

    def no_memory(*_a, **_k):
        raise MemoryError("Unable to allocate 1.2 TiB")
    monkeypatch.setattr(trainer.cli.train, "train", no_memory)
    result = runner.invoke(app, ["train", "--data-dir", str(idx_dir), "--run-dir",
                                 str(tmp_path / "r"), "--batch-size", "99999"])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "out of memory training at batch size 99999" in out and "host memory" in out
    assert "smaller --batch-size" in out and "Traceback" not in out


# --- the whole CLI: SIGTERM, resume ----------------------------------------------------------

@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_resumes(idx_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer", "train", "--data-dir", str(idx_dir),
           "--run-dir", str(run_dir), "--epochs", "60", "--batch-size", "8", "-q"]
    proc = train_until_checkpointed(cmd, run_dir)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    assert "trainer train --resume" in err and "Traceback" not in err
    state = load_checkpoint(run_dir)
    assert state.epoch >= 1
    resumed = subprocess.run([sys.executable, "-m", "trainer", "train", "--resume", str(run_dir),
                              "--data-dir", str(idx_dir), "-q", "--json"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["epochs"][-1]["epoch"] == 60


def test_resume_continues_on_the_runs_own_backend(idx_dir: Path, tmp_path: Path) -> None:
    """`--resume` without --backend trains on the backend the run was started on (numba's
    checkpoints once resumed on NumPy, off by 2e-4); another one given says it breaks the bits."""
    from conftest import _load_or_skip

    _load_or_skip("numba")
    straight = tmp_path / "straight"
    args = ["--data-dir", str(idx_dir), "--epochs", "2", "--batch-size", "32"]
    result = runner.invoke(app, ["train", *args, "--backend", "numba", "--run-dir", str(straight),
                                 "--keep-checkpoints"])
    assert result.exit_code == 0, result.output
    for other in ("numba", "numpy"):
        cut = tmp_path / other
        cut.mkdir()  # the run as it stood after epoch 1: its checkpoint before the last
        (cut / LATEST).write_bytes((straight / PREVIOUS).read_bytes())
        given = [] if other == "numba" else ["--backend", other]
        resumed = runner.invoke(app, ["train", "--resume", str(cut), "--data-dir", str(idx_dir),
                                      *given])
        assert resumed.exit_code == 0, resumed.output
        assert f"backend        {other} (cpu" in resumed.output
        same = all(np.array_equal(a, b) for a, b in zip(
            load_file(straight / "model.safetensors").values(),
            load_file(cut / "model.safetensors").values(), strict=True))
        assert same == (other == "numba")
        note = "trained on numba so far; resumed on numpy, it will not be bit for bit"
        assert (note in " ".join(resumed.output.split())) == (other == "numpy")


def test_resume_refuses_overrides(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--epochs", "3"])
    assert result.exit_code == 2 and "drop CONFIG and the overrides (epochs)" in result.output


def test_resume_without_checkpoint_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "no usable checkpoint" in result.output


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_corrupts_nothing(idx_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer", "train", "--data-dir", str(idx_dir),
           "--run-dir", str(run_dir), "--epochs", "500", "--batch-size", "4",
           "--checkpoint-every", "7", "-q"]
    proc = train_until_checkpointed(cmd, run_dir)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    load_checkpoint(run_dir)  # whole and verified
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_on_a_device_a_diverged_run_is_reported_not_checkpointed(tmp_path: Path) -> None:
    """Where the loss is read only now and then (a GPU), a checkpoint first checks the sums."""
    import dataclasses

    from trainer import backends

    device_like = dataclasses.replace(backends.load("numpy"), on_host=False)
    cfg = Config.from_dict({
        "layers": [{"nodes": 20, "activation": "relu"}, {"nodes": 8, "activation": "identity"},
                   {"nodes": 4}], "learning_rate": 1e6, "batch_size": 10, "epochs": 3,
        "loss": "mse"})
    with pytest.raises(DivergedError):
        train(cfg, make_dataset(n_train=200), device_like, callbacks=Callbacks(
            checkpoint=lambda st: save_checkpoint(tmp_path, st), checkpoint_every=1))
    state = load_checkpoint(tmp_path)  # whatever was saved is whole and finite
    assert all(np.isfinite(p).all() for p in state.params) and np.isfinite(state.loss_sum)
