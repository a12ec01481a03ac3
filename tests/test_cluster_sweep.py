"""`trainer sweep ... --cluster ADDRESS --workers K`: K trial workers as tasks on the session's
real loopback Dask cluster, on a study every worker reaches (SQLite on this machine, as the
scheduler is on loopback; PostgreSQL where TRAINER_TEST_POSTGRES_URL names a server)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainer.cli.app import app
from trainer.core.config import default_config
from trainer.run.catalog import read_run

optuna = pytest.importorskip("optuna")
runner = CliRunner()
SPACE = {"learning_rate": {"log_uniform": [0.003, 0.1]}, "momentum": {"uniform": [0.3, 0.95]}}


def files(tmp_path: Path) -> tuple[Path, Path]:
    cfg, space = tmp_path / "tiny.json", tmp_path / "space.json"
    cfg.write_text(json.dumps(default_config().to_dict() | {"epochs": 1, "batch_size": 16,
                                                            "validation_split": 0.2}))
    space.write_text(json.dumps(SPACE))
    return cfg, space


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_a_sweep_on_the_cluster_records_every_trial_and_its_best_trains(
        storage: str, dask_cluster, cluster_data: Path, tmp_path: Path) -> None:
    url = None
    if storage == "postgresql":
        url = os.environ.get("TRAINER_TEST_POSTGRES_URL")
        if not url:
            pytest.skip("TRAINER_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL "
                        "server)")
    cfg, space = files(tmp_path)
    out = tmp_path / "sw"
    study_name = f"cluster-{os.getpid()}-{tmp_path.name}"
    result = runner.invoke(app, [
        "sweep", str(cfg), "--space", str(space), "--trials", "4", "--workers", "2",
        "--data-dir", str(cluster_data), "--limit-train", "600", "--sweep-dir", str(out),
        "--study", study_name, "--cluster", dask_cluster.address, "--json",
        *(["--storage", url] if url else [])])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["trials"]["COMPLETE"] == 4
    study = optuna.load_study(study_name=study_name,
                              storage=url or f"sqlite:///{out.resolve() / 'study.db'}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    with dask_cluster.client() as client:  # trained by the cluster's workers, not here
        pids = {str(pid) for pid in client.run(os.getpid).values()}
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} <= pids
    for t in trials:  # each trial's run directory came back from its worker
        info = read_run(out / "trials" / str(t.number))
        assert info.state == "finished"
        assert info.metrics["validation_accuracy"] == pytest.approx(t.value)
    best = runner.invoke(app, ["train", str(out / "best.json"), "--data-dir", str(cluster_data),
                               "--limit-train", "600", "--run-dir", str(tmp_path / "best"),
                               "-q"])
    assert best.exit_code == 0, best.output


def test_a_sqlite_study_with_a_remote_cluster_is_refused(cluster_data: Path,
                                                         tmp_path: Path) -> None:
    cfg, space = files(tmp_path)
    result = runner.invoke(app, [
        "sweep", str(cfg), "--space", str(space), "--trials", "2", "--workers", "2",
        "--data-dir", str(cluster_data), "--sweep-dir", str(tmp_path / "sw"),
        "--cluster", "tls://10.1.2.3:8786"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "SQLite file on this machine" in text and "--storage postgresql" in text
    assert not (tmp_path / "sw").exists()


def test_an_unreachable_scheduler_is_exit_2_before_the_sweep_writes_anything(
        cluster_data: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg, space = files(tmp_path)
    result = runner.invoke(app, [
        "sweep", str(cfg), "--space", str(space), "--trials", "2", "--data-dir",
        str(cluster_data), "--sweep-dir", str(tmp_path / "sw"), "--cluster",
        f"tcp://127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in result.output
    assert not (tmp_path / "sw").exists()
