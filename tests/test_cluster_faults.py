"""A batch on a real Dask cluster when things go wrong: a worker killed mid-run, Ctrl-C on the
driver, and a scheduler behind TLS (certificates made here) that refuses a client without them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dask_cluster import listening, start_cluster, wait_workers, worker_env
from safetensors.numpy import load_file
from typer.testing import CliRunner

from trainer.batch import Cluster, train_batch
from trainer.cli.app import app
from trainer.core.config import default_config
from trainer.run.catalog import read_run

pytestmark = pytest.mark.slow
runner = CliRunner()


def slow_config(tmp_path: Path, epochs: int = 30) -> Path:
    """About 1.5 s a run on the session's data (batch size 2: a thousand steps an epoch...
    of 55 µs each): long enough to be caught running."""
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(default_config().to_dict() | {
        "epochs": epochs, "batch_size": 2, "layers": [
            {"nodes": 784, "activation": "ReLU"}, {"nodes": 64, "activation": "Softmax"},
            {"nodes": 10}]}))
    return path


def whole(group: Path, names: list[str]) -> None:
    """The group holds exactly these runs, each finished, and nothing half-written."""
    entries = {p.name for p in group.iterdir()}
    assert entries == {*names, "group.json", "summary.json", "summary.csv", "history.svg",
                       ".trainer-run"}, entries
    assert all(read_run(group / n).state == "finished" for n in names)


def test_a_worker_killed_mid_run_is_retried_and_the_batch_completes(
        dask_cluster, cluster_data: Path, tmp_path: Path) -> None:
    config = slow_config(tmp_path)
    with dask_cluster.client() as client:
        pids = client.run(os.getpid)  # the worker processes (their nannies restart them)
    killed: list[tuple[str, str]] = []

    def kill_on_first_epoch(event: dict) -> None:
        if event["event"] == "epoch" and not killed:
            killed.append((event["run"], event["worker"]))
            os.kill(pids[event["worker"]], signal.SIGKILL)

    group = tmp_path / "g"
    try:
        summary = train_batch([config], [0, 1, 2], data_dir=cluster_data, run_dir=group,
                              cluster=Cluster(dask_cluster.address),
                              on_event=kill_on_first_epoch)
    finally:
        wait_workers(dask_cluster, 2)  # the nanny's new worker, for the tests after this one
    assert killed
    assert summary["complete"] and summary["failed"] == []
    whole(group, ["slow-seed0", "slow-seed1", "slow-seed2"])
    run, worker = killed[0]
    metrics = json.loads((group / run / "metrics.json").read_text())
    assert metrics["cluster"]["worker"] != worker  # trained again, elsewhere
    assert len(metrics["epochs"]) == 30


def test_ctrl_c_on_the_driver_keeps_finished_runs_and_the_rerun_trains_the_rest(
        dask_cluster, cluster_data: Path, tmp_path: Path) -> None:
    config, group = slow_config(tmp_path, epochs=12), tmp_path / "g"
    args = [sys.executable, "-m", "trainer", "train", str(config), "--seeds", "5",
            "--data-dir", str(cluster_data), "--run-dir", str(group), "--cluster",
            dask_cluster.address, "-q"]
    driver = subprocess.Popen(args, cwd=tmp_path, env=worker_env(cluster_data),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, started, finished = [], 0, 0
    for line in driver.stdout:  # Ctrl-C once a run is finished and the third one has started
        seen.append(line)
        started += "training on" in line
        finished += "test accuracy" in line
        if finished and started >= 3:
            break
    driver.send_signal(signal.SIGINT)
    output = "".join(seen) + driver.communicate(timeout=40)[0]
    assert driver.returncode == 130, output
    assert "Run the same command again" in " ".join(output.split())
    states = {p.name: read_run(p).state for p in group.iterdir() if p.is_dir()}
    assert "finished" in states.values() and "interrupted" in states.values(), states
    assert len(states) < 5 and "Traceback" not in output
    with dask_cluster.client() as client:  # the workers are idle: nothing left running
        for _ in range(50):
            if not any(client.processing().values()):
                break
            time.sleep(0.1)
        assert not any(client.processing().values())
    kept = {p: p.stat().st_mtime_ns for n, s in states.items() if s == "finished"
            for p in (group / n).iterdir()}
    again = subprocess.run(args, cwd=tmp_path, env=worker_env(cluster_data), text=True,
                           capture_output=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("(kept)") == list(states.values()).count("finished")
    assert "resuming at epoch" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    whole(group, [f"slow-seed{s}" for s in range(5)])
    resumed = next(n for n, s in states.items() if s == "interrupted")
    straight = tmp_path / "straight"  # the same run, never interrupted, trained here
    train_batch([config], [int(resumed[-1])], data_dir=cluster_data, run_dir=straight)
    want, got = load_file(straight / resumed / "model.safetensors"), \
        load_file(group / resumed / "model.safetensors")
    assert all(np.array_equal(want[k], got[k]) for k in want)


def make_certificate(folder: Path) -> dict[str, str]:
    """A self-signed certificate for 127.0.0.1, its own CA: for the scheduler, the worker and
    the client alike."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return {"tls_ca_file": str(cert), "tls_client_cert": str(cert), "tls_client_key": str(key)}


def test_a_batch_over_tls_and_a_client_without_certificates_refused(
        tmp_path: Path, cluster_data: Path) -> None:
    tls = make_certificate(tmp_path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(default_config().to_dict() | {"epochs": 1}))
    with start_cluster(tmp_path, cluster_data, workers=1, gpu_worker=False, tls=tls) as cluster:
        assert cluster.address.startswith("tls://127.0.0.1:")
        assert {ip for ip, _ in listening(cluster.procs)} == {"127.0.0.1"}
        common = ["train", str(config), "--seeds", "2", "--data-dir", str(cluster_data),
                  "--limit-train", "300", "--cluster", cluster.address, "-q"]
        refused = runner.invoke(app, [*common, "--run-dir", str(tmp_path / "no")])
        assert refused.exit_code == 2, refused.output
        assert not (tmp_path / "no").exists()
        lines = refused.output.strip().splitlines()
        assert lines[-1].startswith(f"error: cannot reach the Dask scheduler at "
                                    f"{cluster.address}")
        assert "--tls-ca" in " ".join(refused.output.split()) and "Traceback" not in \
            refused.output
        ok = runner.invoke(app, [*common, "--run-dir", str(tmp_path / "g"), "--tls-ca",
                                 tls["tls_ca_file"], "--tls-cert", tls["tls_client_cert"],
                                 "--tls-key", tls["tls_client_key"]])
        assert ok.exit_code == 0, ok.output
        assert "warning" not in ok.output  # tls:// is not an open scheduler
        assert read_run(tmp_path / "g" / "tiny-seed1").state == "finished"

