"""--log tensorboard as a user runs it: the event files read back with TensorBoard's own reader
equal history.json, the hparams are there, a group is a logdir; `runs log --to tensorboard`;
the outbox that keeps a tracking server off the training loop; --log refused without its
library."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.cli.app import app
from trainer.track.outbox import Outbox

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [ROOT / "configs" / "default.json", ROOT / "configs" / "hidden-64.json"]
SMALL = ["--epochs", "2", "--limit-train", "1000", "--limit-test", "300", "--quiet"]
# history.json's key of each scalar TensorBoard shows
TAGS = {"loss": "loss", "accuracy/train": "train_accuracy", "accuracy/test": "test_accuracy",
        "accuracy/validation": "val_accuracy", "learning_rate": "learning_rate",
        "seconds": "seconds"}
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return events


def hparams_of(events: EventAccumulator) -> dict[str, object]:
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for k, v in info.hparams.items()}


def assert_scalars_equal_history(run_dir: Path) -> None:
    history = json.loads((run_dir / "history.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    events = read_events(run_dir)
    # a figure the history has (test accuracy, or validation accuracy with a split) is a tag
    tags = {tag: key for tag, key in TAGS.items() if history[0][key] is not None}
    assert set(TAGS) & set(events.Tags()["scalars"]) == set(tags)
    for tag, key in tags.items():
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        # TensorBoard keeps float32
        assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in history], tag
    speeds = [e.value for e in events.Scalars("samples_per_second")]
    assert speeds == [pytest.approx(metrics["train_samples"] / r["seconds"], rel=1e-6)
                      for r in history]
    final = events.Scalars("final/test_accuracy")
    assert [e.value for e in final] == [pytest.approx(metrics["test_accuracy"], rel=1e-6)]


@pytest.mark.slow
def test_a_batch_logs_tensorboard_per_run_and_the_group_is_a_logdir(
        mnist, tmp_path: Path) -> None:
    group = tmp_path / "group"
    result = invoke("train", *CONFIGS, "--seeds", "2", *SMALL, "--run-dir", group,
                    "--log", "tensorboard")
    assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in group.iterdir() if (p / "config.json").is_file())
    assert runs == ["default-seed0", "default-seed1", "hidden-64-seed0", "hidden-64-seed1"]
    for name in runs:
        assert_scalars_equal_history(group / name)
        config = json.loads((group / name / "config.json").read_text())
        hparams = hparams_of(read_events(group / name))
        assert hparams["layers.1.nodes"] == config["layers"][1]["nodes"]
        assert hparams["seed"] == config["seed"]
        assert hparams["learning_rate"] == pytest.approx(config["learning_rate"])
        assert hparams["state"] == "finished"
    logdir = EventMultiplexer().AddRunsFromDirectory(str(group))
    logdir.Reload()
    assert sorted(logdir.Runs()) == [f"{r}/tensorboard" for r in runs]


def test_runs_log_to_tensorboard_writes_a_run_trained_without_it_once(
        mnist, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert invoke("train", CONFIGS[0], *SMALL, "--run-dir", run_dir, "--validation-split",
                  "0.2").exit_code == 0
    assert not (run_dir / "tensorboard").exists()
    for _ in range(2):  # the second time replaces the first: no doubled curves
        result = invoke("runs", "log", run_dir, "--to", "tensorboard")
        assert result.exit_code == 0, result.output
        assert_scalars_equal_history(run_dir)
        assert len(list((run_dir / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [
        ".trainer-run"]  # no staging folder left behind


def test_log_needs_its_library_and_a_known_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    for args in (["--log", "mlflow"], ["--log", "tensorboard,mlflow"]):
        result = invoke("train", *SMALL, "--run-dir", tmp_path / "r", *args)
        assert result.exit_code == 2, result.output
        assert 'python -m pip install ".[mlflow]"' in " ".join(result.output.split())
    monkeypatch.setenv("TRAINER_LOG", "mlflow")
    assert invoke("train", *SMALL, "--run-dir", tmp_path / "r").exit_code == 2
    result = invoke("train", *SMALL, "--run-dir", tmp_path / "r", "--log", "wandb")
    assert result.exit_code == 2 and "choose tensorboard or mlflow" in result.output
    assert not (tmp_path / "r").exists()  # refused before the run directory is made


def test_a_server_that_refuses_everything_costs_one_warning_and_a_note(
        mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refusing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(503, "down for maintenance")

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}")
    run_dir = tmp_path / "run"
    try:
        result = invoke("train", CONFIGS[0], *SMALL, "--run-dir", run_dir, "--log", "mlflow")
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert result.output.count("could not log") == 1  # warned once
    assert "did not get: default: epoch 1; default: epoch 2; default: its params" in \
        result.output
    assert f"trainer runs log {run_dir} --to mlflow" in result.output
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]  # the run itself is whole
    assert (run_dir / "model.safetensors").is_file()


def test_a_tensorboard_write_that_fails_is_one_warning_not_a_failed_run(
        mnist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.track.tensorboard import TensorBoardRun

    def full(self: TensorBoardRun, row: dict, walltime: float | None = None) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardRun, "epoch", full)
    run_dir = tmp_path / "run"
    result = invoke("train", CONFIGS[0], *SMALL, "--run-dir", run_dir, "--log", "tensorboard")
    assert result.exit_code == 0, result.output
    assert result.output.count("TensorBoard: could not write") == 1
    assert "No space left on device" in result.output
    assert len(json.loads((run_dir / "history.json").read_text())) == 2
    assert (run_dir / "model.safetensors").is_file()


def test_a_batch_event_that_cannot_be_logged_is_a_warning(tmp_path: Path) -> None:
    from trainer.track import BatchLog, Tracking

    warnings: list[str] = []
    logs = BatchLog(Tracking(("tensorboard",), warnings.append), lambda cfg: None)
    logs.on_group(tmp_path)
    (tmp_path / "gone-seed0").mkdir()  # a kept run whose files were removed meanwhile
    logs.on_event({"event": "kept", "run": "gone-seed0"})
    assert len(warnings) == 1 and "could not log gone-seed0's kept" in warnings[0]
    assert "not a run directory" in warnings[0]


def test_the_outbox_retries_warns_once_and_never_holds_the_caller() -> None:
    warnings: list[str] = []
    outbox = Outbox("server", warnings.append, retries=3, backoff=0.01)
    attempts: list[str] = []
    flaky = iter([RuntimeError("503"), None])

    def once_flaky() -> None:
        attempts.append("flaky")
        error = next(flaky)
        if error:
            raise error

    def down() -> None:
        attempts.append("down")
        raise ConnectionError("refused")

    outbox.put("flaky", once_flaky)
    outbox.put("first", down)
    outbox.put("second", down)  # the server is down now: tried once, not three times
    outbox.put("third", lambda: attempts.append("ok"))
    assert outbox.close(5) == ["first", "second"]
    assert attempts == ["flaky", "flaky", "down", "down", "down", "down", "ok"]
    assert len(warnings) == 1 and "could not log first" in warnings[0]

    release = threading.Event()
    slow = Outbox("slow", warnings.append)
    started = time.monotonic()
    slow.put("hung", release.wait)
    slow.put("queued", lambda: None)
    assert time.monotonic() - started < 0.5  # put returns at once
    left = slow.close(timeout=0.2)
    release.set()
    assert left == ["hung (still waiting when training ended)",
                    "queued (still waiting when training ended)"]
