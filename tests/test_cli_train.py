"""`trainer train` and `trainer backends` as a user runs them: exit codes, output, run files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run, write_config
from references import numpy_forward_predict
from safetensors.numpy import load_file

from trainer.cli.app import app
from trainer.core.config import Config
from trainer.data.dataset import load_dataset
from trainer.data.idx import read_images, read_labels
from trainer.run.results import Engine
from trainer.run.train import train


def test_train_writes_a_run_that_reproduces_its_accuracy(idx_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run("train", write_config(tmp_path), "--data-dir", idx_dir, "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    for section in ("Network configuration: tiny", "784 -> 128 (sigmoid) -> 10 (softmax)",
                    "epoch   1/2", "epoch   2/2", "Final training accuracy",
                    "Total training time", "Test accuracy", f"Run directory: {run_dir}"):
        assert section in result.output
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.json", "model.safetensors", "metrics.json", "history.csv", "history.json"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train_accuracy", "test_accuracy", "total_seconds", "backend", "device",
                "dtype", "seed", "epochs"):
        assert key in metrics
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["backend"] == "numpy" and metrics["dtype"] == "float32"
    # the saved weights, run through an independent forward pass, give the recorded accuracy
    meta_scaling = json.loads(_metadata(run_dir / "model.safetensors")["input_scaling"])
    pred = numpy_forward_predict(load_file(run_dir / "model.safetensors"), meta_scaling,
                                 read_images(idx_dir / "t10k-images-idx3-ubyte"))
    labels = read_labels(idx_dir / "t10k-labels-idx1-ubyte")
    assert np.mean(pred == labels) == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    # the CLI trained as the plain array-API step does (no kernels): same losses, same accuracy
    plain = train(Config.from_file(tmp_path / "tiny.json"), load_dataset(idx_dir),
                  "numpy", engine=Engine(fast=False))
    np.testing.assert_allclose([e["loss"] for e in metrics["epochs"]],
                               [h.loss for h in plain.history], rtol=1e-4)
    assert metrics["test_accuracy"] == pytest.approx(plain.test_accuracy, abs=1 / len(labels))
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 2


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return f.metadata()


def test_overrides_and_limits_apply(idx_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run("train", write_config(tmp_path), "--data-dir", idx_dir, "--run-dir", run_dir,
                 "--epochs", "1", "--dtype", "float64", "--seed", "7", "--limit-test", "50",
                 "--learning-rate", "0.02", "--momentum", "0.1", "--batch-size", "8", "-q")
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["epochs"], config["dtype"], config["seed"]) == (1, "float64", 7)
    assert (config["learning_rate"], config["momentum"], config["batch_size"]) == (0.02, 0.1, 8)
    assert "(50 images)" in result.output
    assert "epoch   1/1" in result.output  # --quiet: plain lines per epoch, no tables
    assert "Network configuration" not in result.output
    assert "Confusion matrix" not in result.output


@pytest.mark.parametrize(("changes", "message"), [
    ({"learning_rate": -1}, "learning_rate must be greater than 0"),
    ({"layers": [{"nodes": 100, "activation": "Sigmoid"}, {"nodes": 10}]},
     "layers[0].activation"),
    ({"layers": [{"nodes": 100, "activation": "Softmax"}, {"nodes": 10}]},
     "layers[0].nodes is 100, but the data's images have 28x28 = 784 pixels"),
    ({"layers": [{"nodes": 784, "activation": "Softmax"}, {"nodes": 7}]},
     "layers[1].nodes is 7, but the dataset mnist has 10 classes"),
    ({"batch_size": 0}, "batch_size must be greater than 0"),
    ({"validation_split": 600}, "validation_split 600 leaves no training images out of 600"),
])
def test_bad_config_exits_2_without_a_run_dir(idx_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, changes: dict,
                                              message: str) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("train", write_config(tmp_path, **changes), "--data-dir", idx_dir)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_bad_usage_exits_2(idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("train", "--backend", "nonesuch", "--data-dir", idx_dir)
    assert result.exit_code == 2 and "unknown backend 'nonesuch'" in result.output
    result = run("train", tmp_path / "missing.json")
    assert result.exit_code == 2 and "missing.json" in result.output
    result = run("train", "--dtype", "float16", "--data-dir", idx_dir)
    assert result.exit_code == 2 and "dtype must be 'float32' or 'float64'" in result.output
    assert not (tmp_path / "runs").exists()


def test_existing_run_dir_is_never_clobbered(idx_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("precious")
    result = run("train", write_config(tmp_path), "--data-dir", idx_dir, "--run-dir", run_dir)
    assert result.exit_code == 2 and "already exists" in result.output
    assert (run_dir / "metrics.json").read_text() == "precious"


def test_default_run_dirs_are_distinct(idx_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path, epochs=1)
    for _ in range(2):
        assert run("train", cfg, "--data-dir", idx_dir, "-q").exit_code == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all("-tiny" in r for r in runs)


def test_backends_lists_every_backend_with_status() -> None:
    result = run("backends")
    assert result.exit_code == 0
    for name in ("numpy", "array-api-strict", "torch", "cupy"):
        assert name in result.output
    try:
        import cupy  # noqa: F401
    except ImportError:
        line = next(ln for ln in result.output.splitlines() if "cupy" in ln)
        assert "no" in line and "not installed" in result.output
    from trainer import backends

    offered = backends.load("numpy").kernels.offered()
    assert {"matmul", "gemm_acc", "softmax_xent_t"} <= set(offered)
    assert f"numpy kernels: {', '.join(offered)}" in " ".join(result.output.split())
    assert "array-api-strict kernels: none (the plain array-API step)" in result.output
    if backends.status("jax").available:  # installed with the test extra
        assert ("jax kernels: none (the plain array-API step, compiled whole)"
                in " ".join(result.output.split()))


def test_backends_shows_a_kernel_a_self_test_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from trainer import backends

    real = backends.status

    def status(name: str) -> backends.BackendStatus:
        found = real(name)
        if name != "numpy":
            return found
        return dataclasses.replace(found, dropped=(("gemm_acc", "float64 self-test: [red]x"),))

    monkeypatch.setattr(backends, "status", status)
    result = run("backends")
    assert result.exit_code == 0
    assert "numpy: kernel gemm_acc left out: float64 self-test: [red]x" in result.output


def test_help_lists_every_command_and_each_commands_options() -> None:
    import typer.main

    result = run("--help")
    assert result.exit_code == 0
    group = typer.main.get_command(app)
    commands = {name: group.commands[name] for name in group.commands}
    for name, sub in list(commands.items()):  # `data fetch`, `data info`
        commands |= {f"{name} {n}": c for n, c in getattr(sub, "commands", {}).items()}
    assert {"train", "evaluate", "predict", "backends", "bench", "sweep", "data",
            "data fetch", "data info"} <= commands.keys()
    for name in group.commands:
        assert f" {name} " in result.output, name
    for name, command in commands.items():
        page = run(*name.split(), "--help")
        assert page.exit_code == 0, name
        flat = " ".join(page.output.split())  # rich wraps and boxes long lines
        for param in command.params:
            for option in param.opts if param.param_type_name == "option" else ():
                if option.startswith("--"):
                    assert option in flat, f"`trainer {name} --help` does not name {option}"


def test_live_bar_after_a_resume_mid_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --resume` mid-epoch never sends that epoch's step 1: the bar must still show the
    epoch, the step count and a rate measured from the first step it saw."""
    import io
    import types

    from rich.console import Console

    from trainer import backends
    from trainer.cli import display
    from trainer.cli.display import TrainProgress
    from trainer.core.step.sums import RunningSums
    from trainer.run.results import StepInfo

    now = [100.0]
    monkeypatch.setattr(display, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    numpy, batch, steps = backends.load("numpy", None), 32, 100

    def step(epoch: int, n: int, at: float) -> None:
        now[0] = at
        seen = n * batch
        progress.on_step(StepInfo(epoch, n, steps, seen,
                                  RunningSums(numpy, None, 0.5 * seen, 0.9 * seen)))

    def shown() -> str:
        out = Console(file=io.StringIO(), width=200, color_system=None)
        out.print(progress.progress.get_renderable())
        return out.file.getvalue()

    progress = TrainProgress(Console(file=io.StringIO()), epochs=5, live=True)
    step(3, 41, 100.0)  # resumed in epoch 3 after step 40
    bars = shown()
    assert "epoch 3" in bars and "41/100" in bars and "2/5" in bars
    assert "/s" not in bars  # no time has passed since the first step seen
    step(3, 100, 102.0)  # the epoch's last step always shows: 59 steps in 2 s
    bars = shown()
    assert "100/100" in bars and f"{59 * batch / 2:,.0f}/s" in bars
    assert "loss 0.5000" in bars and "acc 90.00%" in bars
    step(4, 1, 103.0)
    bars = shown()
    assert "epoch 4" in bars and "1/100" in bars and "3/5" in bars
