"""--log mlflow against a real `mlflow server` (SQLite store, local artifact root, on
127.0.0.1), read back with MlflowClient: params, metric histories equal history.json,
artifacts and the model's SHA-256, a batch's nested runs, a sweep's trials and their states;
a server killed mid-run, and the run sent afterwards exactly once."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from trainer.cli.app import app
from trainer.track.live import RunLog

pytest.importorskip("mlflow.server")
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [ROOT / "configs" / "default.json", ROOT / "configs" / "hidden-64.json"]
SMALL = ["--epochs", "2", "--limit-train", "1000", "--limit-test", "300", "--quiet"]
KEYS = {"loss": "loss", "accuracy/train": "train_accuracy", "accuracy/test": "test_accuracy",
        "learning_rate": "learning_rate", "seconds": "seconds"}
START_SECONDS = 120  # a server's start on a busy 2-core machine; a new database migrates first
runner = CliRunner()


class Server:
    """`mlflow server` in its own process group, so that it and its workers stop together."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.url = root, f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log: Any = None

    def start(self) -> None:
        self.log = log = open(self.root / "server.log", "ab")  # noqa: SIM115 (closed by stop)
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job workers
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1", "--backend-store-uri",
             f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination",
             str(self.root / "artifacts")], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(self.root / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"mlflow server did not answer in {START_SECONDS} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log is not None:
            self.log.close()
        self.proc = self.log = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """One real server for the test run (a new database costs seconds of migrations)."""
    server = Server(tmp_path_factory.mktemp("mlflow"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def tracking(mlflow_server: Server, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """The server as MLFLOW_TRACKING_URI, in an experiment of this test's own."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"test-{uuid.uuid4().hex[:8]}")
    return MlflowClient(mlflow_server.url)


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def runs_of(client: MlflowClient, query: str = "") -> list:
    experiment = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    return client.search_runs([experiment.experiment_id], query) if experiment else []


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_run_matches(client: MlflowClient, run, run_dir: Path, tmp_path: Path) -> None:
    """The MLflow run carries the run directory: params, every epoch, artifacts, tags."""
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    params, tags = run.data.params, run.data.tags
    assert params["layers.1.nodes"] == str(config["layers"][1]["nodes"])
    assert params["learning_rate"] == str(config["learning_rate"])
    assert params["seed"] == str(config["seed"])
    assert params["backend"] == metrics["backend"] and params["device"] == metrics["device"]
    assert params["dataset"] == "mnist"
    assert params["dataset_sha256"] == metrics["data"]["sha256"]
    assert params["versions.numpy"] == metrics["versions"]["numpy"]
    assert tags["trainer.run_id"] == metrics["run_id"]
    assert tags["trainer.config_sha256"] == hashlib.sha256(
        json.dumps(config, sort_keys=True).encode()).hexdigest()
    for key, field in KEYS.items():
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert logged == [(r["epoch"], r[field]) for r in history], key
    assert run.data.metrics["final/test_accuracy"] == metrics["test_accuracy"]
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.json", "history.svg", "confusion.svg",
            "model.safetensors"} <= names
    model = client.download_artifacts(run.info.run_id, "model.safetensors", str(tmp_path))
    assert sha256(Path(model)) == sha256(run_dir / "model.safetensors")
    try:  # the export names trainer's installed version: from a bare checkout it cannot
        importlib.metadata.version("trainer")
        assert "model.onnx" in names
    except importlib.metadata.PackageNotFoundError:
        assert "model.onnx" not in names
        assert tags["trainer.onnx"].startswith("not exported: PackageNotFoundError")
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_a_batch_is_a_parent_run_with_a_child_per_run(
        mnist, tracking: MlflowClient, tmp_path: Path) -> None:
    group = tmp_path / "group"
    result = invoke("train", *CONFIGS, "--seeds", "2", *SMALL, "--run-dir", group,
                    "--log", "mlflow", "--json")
    assert result.exit_code == 0, result.output
    (parent,) = runs_of(tracking, "tags.`trainer.kind` = 'batch'")
    assert parent.info.run_name == "group" and parent.info.status == "FINISHED"
    assert "summary.json" in {f.path for f in tracking.list_artifacts(parent.info.run_id)}
    children = runs_of(tracking, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == [
        "default-seed0", "default-seed1", "hidden-64-seed0", "hidden-64-seed1"]
    for child in children:
        assert child.data.tags["trainer.group"] == "group"
        assert_run_matches(tracking, child, group / child.info.run_name, tmp_path)
    # stdout is still strict JSON: MLflow's own "View run at" lines are kept off it
    assert json.loads(result.stdout)["name"] == "group"
    again = invoke("runs", "log", group, "--to", "mlflow")  # the group, sent afterwards too
    assert again.exit_code == 0, again.output
    assert again.output.count("already in MLflow") == 4
    assert len(runs_of(tracking)) == 5  # nothing doubled


@pytest.mark.slow
def test_a_sweep_is_a_parent_run_with_a_child_per_trial_and_its_state(
        mnist, tracking: MlflowClient, tmp_path: Path) -> None:
    import optuna

    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"log_uniform": [0.0001, 0.3]}}))
    sweep = tmp_path / "sweep"
    result = invoke("sweep", CONFIGS[0], "--space", space, "--trials", 6, "--epochs", 3,
                    "--limit-train", 3000, "--sweep-dir", sweep, "--log", "mlflow",
                    "--log", "tensorboard", "--json")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{sweep}/study.db")
    states = {f"trial {t.number}": t.state.name for t in study.trials}
    (parent,) = runs_of(tracking, "tags.`trainer.kind` = 'sweep'")
    children = runs_of(tracking, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    logged = {r.info.run_name: (r.data.tags["trainer.state"], r.info.status) for r in children}
    expected = {"COMPLETE": ("finished", "FINISHED"), "PRUNED": ("pruned", "KILLED")}
    assert logged == {name: expected[state] for name, state in states.items()}
    assert "PRUNED" in states.values()  # the median pruner stops a poor trial here
    for child in children:
        history = json.loads((sweep / "trials" / child.info.run_name.split()[1] /
                              "metrics.json").read_text())["epochs"]
        losses = tracking.get_metric_history(child.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in losses) == [(r["epoch"], r["loss"])
                                                             for r in history]
    for trial in study.trials:  # and each trial is a TensorBoard run of the sweep's logdir
        events = EventAccumulator(str(sweep / "trials" / str(trial.number) / "tensorboard"))
        events.Reload()
        rates = [e.value for e in events.Scalars("learning_rate")]
        epochs = 3 if trial.state.name == "COMPLETE" else len(rates)  # pruned: fewer
        assert rates == [pytest.approx(trial.params["learning_rate"], rel=1e-6)] * epochs
        assert rates
    again = invoke("runs", "log", sweep, "--to", "mlflow")
    assert again.exit_code == 0 and again.output.count("already in MLflow") == len(states)


@pytest.mark.slow
def test_a_server_killed_mid_run_costs_a_warning_and_the_run_is_sent_later_once(
        mnist, mlflow_server: Server, tracking: MlflowClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    original = RunLog.on_epoch

    def on_epoch(self: RunLog, stats) -> None:
        original(self, stats)
        if stats.epoch == 1:  # once epoch 1 is on the server, the server dies
            deadline = time.monotonic() + 60
            while not any("loss" in r.data.metrics for r in runs_of(tracking)):
                assert time.monotonic() < deadline, "epoch 1 never reached the server"
                time.sleep(0.1)
            mlflow_server.stop(signal.SIGKILL)

    monkeypatch.setattr(RunLog, "on_epoch", on_epoch)
    run_dir = tmp_path / "run"
    try:
        result = invoke("train", CONFIGS[0], *SMALL, "--epochs", "3", "--run-dir", run_dir,
                        "--log", "mlflow")
    finally:
        mlflow_server.start()  # back on the same port and database, for what follows
    assert result.exit_code == 0, result.output
    assert "warning: MLflow: could not log default: epoch 2" in result.output
    assert f"trainer runs log {run_dir} --to mlflow" in result.output
    (partial,) = runs_of(tracking)
    assert [m.step for m in tracking.get_metric_history(partial.info.run_id, "loss")] == [1]

    sent = invoke("runs", "log", run_dir, "--to", "mlflow")
    assert sent.exit_code == 0 and "sent" in sent.output, sent.output
    again = invoke("runs", "log", run_dir, "--to", "mlflow")
    assert again.exit_code == 0 and "already in MLflow" in again.output, again.output
    (run,) = runs_of(tracking)  # the live run, completed: one MLflow run, not two
    assert run.info.run_id == partial.info.run_id
    assert_run_matches(tracking, run, run_dir, tmp_path)
