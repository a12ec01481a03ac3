"""`trainer train ... --cluster ADDRESS`: a batch on a real Dask cluster on loopback (the
session's `dask_cluster`: a scheduler and two single-thread workers), no mocks of Dask."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dask_cluster import listening
from safetensors.numpy import load_file
from typer.testing import CliRunner

import trainer.batch.remote
from trainer.batch import Cluster, train_batch
from trainer.batch.connect import check_address, exposed
from trainer.cli.app import app
from trainer.core.config import default_config
from trainer.errors import UsageError

runner = CliRunner()
SMALL = [{"nodes": 784, "activation": "ReLU"}, {"nodes": 16, "activation": "Softmax"},
         {"nodes": 10}]


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def configs(tmp_path: Path, epochs: int = 1) -> tuple[Path, Path]:
    """Two small configs: `a` (784-16-10) and `b` (784-32-10)."""
    base = default_config().to_dict() | {"epochs": epochs, "batch_size": 16, "layers": SMALL}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(base))
    b.write_text(json.dumps(base | {"layers": [SMALL[0], SMALL[1] | {"nodes": 32}, SMALL[2]]}))
    return a, b


def weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(run_dir / "model.safetensors")


def test_the_cluster_listens_on_loopback_only(dask_cluster) -> None:
    found = listening(dask_cluster.procs)
    assert len(found) >= 5  # scheduler, its dashboard, two nannies, two workers
    assert {ip for ip, _ in found} == {"127.0.0.1"}, found


@pytest.mark.slow
def test_a_batch_on_the_cluster_equals_the_local_batch_and_is_kept(
        dask_cluster, cluster_data: Path, tmp_path: Path) -> None:
    a, b = configs(tmp_path)
    common = ("train", a, b, "--seeds", "2", "--data-dir", cluster_data, "--limit-train", 600,
              "-q")
    local = run(*common, "--run-dir", tmp_path / "local")
    assert local.exit_code == 0, local.output
    remote = run(*common, "--run-dir", tmp_path / "cluster", "--cluster", dask_cluster.address)
    assert remote.exit_code == 0, remote.output
    group = tmp_path / "cluster"
    names = ["a-seed0", "a-seed1", "b-seed0", "b-seed1"]
    assert {p.name for p in group.iterdir()} == {*names, "group.json", "summary.json",
                                                 "summary.csv", "history.svg", ".trainer-run"}
    for name in names:  # the same weights, seed for seed, and the same test accuracy
        want, got = weights(tmp_path / "local" / name), weights(group / name)
        assert want.keys() == got.keys()
        assert all(np.array_equal(want[k], got[k]) for k in want), name
        metrics = json.loads((group / name / "metrics.json").read_text())
        assert metrics["cluster"]["worker"].startswith("tcp://127.0.0.1:")
        assert metrics["test_accuracy"] == json.loads(
            (tmp_path / "local" / name / "metrics.json").read_text())["test_accuracy"]
        assert f"{name}: training on tcp://127.0.0.1:" in remote.output
    summary = json.loads((group / "summary.json").read_text())
    assert summary["complete"] and summary["failed"] == []
    before = {p: p.stat().st_mtime_ns for p in group.rglob("*") if p.is_file()
              and p.parent != group}
    again = run(*common, "--run-dir", group, "--cluster", dask_cluster.address)
    assert again.exit_code == 0, again.output
    assert again.output.count("(kept)") == 4 and "training" not in again.output
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_run_that_wants_a_gpu_lands_on_the_gpu_worker(dask_cluster, cluster_data: Path,
                                                        tmp_path: Path) -> None:
    a, _ = configs(tmp_path)
    with dask_cluster.client() as client:
        gpu_workers = {addr for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()
                       if w["resources"].get("GPU")}
    summary = train_batch([a], [0, 1, 2], data_dir=cluster_data, limit_train=300,
                          run_dir=tmp_path / "g", cluster=Cluster(dask_cluster.address, gpu=True))
    assert summary["complete"]
    for seed in (0, 1, 2):
        where = json.loads((tmp_path / "g" / f"a-seed{seed}" / "metrics.json").read_text())
        assert where["cluster"]["cuda_visible_devices"] == "0"
        assert where["cluster"]["worker"] in gpu_workers


def test_other_data_on_a_worker_fails_its_runs_and_ship_data_sends_it(
        dask_cluster, idx_dir: Path, cluster_data: Path, tmp_path: Path) -> None:
    a, _ = configs(tmp_path)
    args = ("train", a, "--seeds", "2", "--data-dir", idx_dir, "--limit-train", 300,
            "--run-dir", tmp_path / "g", "--cluster", dask_cluster.address, "-q")
    failed = run(*args)
    assert failed.exit_code == 1, failed.output
    text = " ".join(failed.output.split())
    from trainer.data.dataset import read_dataset

    theirs, ours = (read_dataset(d).fingerprint() for d in (cluster_data, idx_dir))
    assert f"SHA-256 {theirs} there, {ours} on the driver" in text
    assert "a-seed0 failed on tcp://127.0.0.1:" in text and "trains the failed runs" in text
    assert not (tmp_path / "g" / "a-seed0").exists()
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert [f["run"] for f in summary["failed"]] == ["a-seed0", "a-seed1"]
    shipped = run(*args, "--ship-data", "--json")  # with the data: the failed ones train
    assert shipped.exit_code == 0, shipped.output
    summary = json.loads(shipped.stdout)  # --json: the summary and nothing else
    assert summary["complete"] and summary["failed"] == []
    metrics = json.loads((tmp_path / "g" / "a-seed1" / "metrics.json").read_text())
    assert metrics["data"]["sha256"] == ours


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_an_unreachable_scheduler_is_exit_2_within_10_s(address: str, idx_dir: Path,
                                                        tmp_path: Path) -> None:
    a, _ = configs(tmp_path)
    address = address.format(port=free_port())
    t0 = time.monotonic()
    result = run("train", a, "--seeds", "1", "--data-dir", idx_dir, "--cluster", address,
                 "--run-dir", tmp_path / "g")
    assert time.monotonic() - t0 < 10
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert "Traceback" not in result.output and len(lines) == 1
    assert not (tmp_path / "g").exists()  # no group directory for a batch that never ran


@pytest.mark.parametrize("address", ["tcp://", "http://127.0.0.1:8786", "tcp://host:99999",
                                     "tcp://a b:1", "127.0.0.1"])
def test_a_malformed_address_is_exit_2_before_anything_is_written(
        address: str, idx_dir: Path, tmp_path: Path) -> None:
    a, _ = configs(tmp_path)
    result = run("train", a, "--seeds", "1", "--data-dir", idx_dir, "--cluster", address,
                 "--run-dir", tmp_path / "g")
    assert result.exit_code == 2, result.output
    assert "is not a Dask scheduler address" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "g").exists()


def test_addresses_and_the_warning_for_an_open_scheduler(idx_dir: Path, tmp_path: Path) -> None:
    assert check_address("127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    assert not exposed("tcp://127.0.0.1:8786") and not exposed("tcp://localhost:1")
    assert not exposed("tcp://[::1]:8786") and not exposed("tls://10.0.0.5:8786")
    assert exposed("tcp://0.0.0.0:8786")
    assert exposed("tcp://10.0.0.5:8786") and exposed("tcp://gpu-box:8786")
    a, _ = configs(tmp_path)
    result = run("train", a, "--seeds", "1", "--data-dir", idx_dir, "--cluster",
                 f"tcp://0.0.0.0:{free_port()}", "--run-dir", tmp_path / "g")
    assert result.exit_code == 2
    assert "neither on loopback nor tls://" in " ".join(result.output.split())
    single = run("train", a, "--data-dir", idx_dir, "--cluster", "tcp://127.0.0.1:1")
    assert single.exit_code == 2 and "--cluster runs a batch" in single.output
    alone = run("train", a, "--seeds", "1", "--ship-data")
    assert alone.exit_code == 2 and "--ship-data goes with --cluster" in alone.output
    both = run("train", a, "--seeds", "2", "--workers", "2", "--data-dir", idx_dir,
               "--cluster", "tcp://127.0.0.1:1", "--run-dir", tmp_path / "w")
    assert both.exit_code == 2 and "--workers starts local processes" in both.output
    assert not (tmp_path / "w").exists()


def test_without_the_extra_it_says_what_to_install(idx_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed: ImportError
    a, _ = configs(tmp_path)
    result = run("train", a, "--seeds", "1", "--data-dir", idx_dir, "--cluster",
                 "tcp://127.0.0.1:8786", "--run-dir", tmp_path / "g")
    assert result.exit_code == 2
    assert 'python -m pip install ".[cluster]"' in " ".join(result.output.split())


def test_workers_with_other_code_are_refused_before_anything_runs(
        dask_cluster, cluster_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer.batch.remote, "code_digest", lambda: "0123456789abcdef")
    a, _ = configs(tmp_path)
    with pytest.raises(UsageError, match=r"worker tcp://127\.0\.0\.1:\d+ runs other versions "
                                         r"than this driver: trainer code [0-9a-f]{16} there, "
                                         r"0123456789abcdef here"):
        train_batch([a], [0], data_dir=cluster_data, run_dir=tmp_path / "g",
                    cluster=Cluster(dask_cluster.address))
    assert not (tmp_path / "g").exists()


def test_a_diverged_run_is_recorded_the_others_go_on_and_the_env_names_the_scheduler(
        dask_cluster, cluster_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = configs(tmp_path)
    hot = tmp_path / "hot.json"
    hot.write_text(json.dumps(json.loads(a.read_text()) | {"learning_rate": 1e9}))
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", dask_cluster.address)  # no --cluster
    group = tmp_path / "g"
    result = run("train", a, hot, "--data-dir", cluster_data, "--limit-train", 300,
                 "--run-dir", group, "-q")
    assert result.exit_code == 1, result.output
    assert "1 run(s) diverged" in " ".join(result.output.split())
    diverged = json.loads((group / "hot-seed0" / "metrics.json").read_text())
    assert diverged["diverged"] is True and "learning rate 1e+09" in diverged["message"]
    assert diverged["cluster"]["worker"].startswith("tcp://127.0.0.1:")  # trained there
    log = (group / "a-seed0" / "worker.log").read_text().splitlines()
    where = json.loads((group / "a-seed0" / "metrics.json").read_text())["cluster"]
    assert log[0].endswith(f"a-seed0 on {where['worker']} (host {os.uname().nodename}, "
                           f"1 thread(s), CUDA_VISIBLE_DEVICES={where['cuda_visible_devices']})")
    assert [line.split(" ", 1)[1].split(" loss")[0] for line in log[1:3]] == ["training",
                                                                              "epoch 1/1"]
    assert log[-1].endswith(" finished")


def test_the_live_table_shows_each_runs_state_worker_and_outcome() -> None:
    from rich.console import Console

    from trainer.cli.cluster import RunTable

    console = Console(record=True, width=80, force_terminal=False)
    table = RunTable(console)
    w = "tcp://127.0.0.1:1"
    for event in ({"event": "queued", "run": "a-seed0"}, {"event": "queued", "run": "a-seed1"},
                  {"event": "queued", "run": "a-seed2"}, {"event": "queued", "run": "[b]-seed0"},
                  {"event": "start", "run": "a-seed0", "resume_epoch": None, "worker": w},
                  {"event": "epoch", "run": "a-seed0", "worker": w, "epochs": 3,
                   "stats": {"epoch": 2}},
                  {"event": "start", "run": "a-seed1", "resume_epoch": None, "worker": w},
                  {"event": "done", "run": "a-seed1", "state": "finished", "worker": w,
                   "test_accuracy": 0.9712, "seconds": 1.0},
                  {"event": "failed", "run": "[b]-seed0", "worker": w,
                   "message": "no data\x1b[31m here"}):
        table.on_event(event)
    console.print(table)
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:5]]
            for line in console.export_text().splitlines() if line.startswith("│")}
    assert rows == {"a-seed0": ["running", w, "epoch 2/3"],
                    "a-seed1": ["finished", w, "97.12%"],
                    "a-seed2": ["queued", "", ""],
                    "[b]-seed0": ["failed", w, "no data\\x1b[31m here"]}


def test_a_run_directory_from_a_worker_arrives_whole_or_not_at_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.batch.rundirs import write_run_dir
    from trainer.errors import TrainerError

    run_dir = tmp_path / "a-seed0"
    write_run_dir(run_dir, {"config.json": b"{}", "checkpoint.safetensors": b"old"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-seed0"]
    with pytest.raises(TrainerError, match="a worker sent a file named '../x'"):
        write_run_dir(run_dir, {"../x": b"", "config.json": b"new"})
    calls = []

    def fsync_fails_on_the_second_file(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync_fails_on_the_second_file)
    with pytest.raises(TrainerError, match="No space left on device"):
        write_run_dir(run_dir, {"config.json": b"new", "metrics.json": b"{}"})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-seed0"]  # no hidden leftovers
    assert (run_dir / "checkpoint.safetensors").read_bytes() == b"old"  # as it was
    write_run_dir(run_dir, {"config.json": b"new", "metrics.json": b"{}"})  # replaced whole
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-seed0"]


@pytest.mark.slow
def test_a_cluster_batch_is_logged_to_tensorboard_as_its_runs_arrive(
        dask_cluster, cluster_data: Path, tmp_path: Path) -> None:
    """--log with --cluster: a run trains on a worker and arrives whole at the end, so it is
    logged then, from its run directory (the epochs' scalars equal its history)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    a, _ = configs(tmp_path, epochs=2)
    group = tmp_path / "g"
    result = run("train", a, "--seeds", "2", "--data-dir", cluster_data, "--limit-train", 300,
                 "-q", "--run-dir", group, "--cluster", dask_cluster.address,
                 "--log", "tensorboard")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output.lower(), result.output
    for name in ("a-seed0", "a-seed1"):
        events = EventAccumulator(str(group / name / "tensorboard"))
        events.Reload()
        history = json.loads((group / name / "history.json").read_text())
        logged = [(e.step, e.value) for e in events.Scalars("loss")]
        assert logged == [(h["epoch"], pytest.approx(h["loss"], rel=1e-6)) for h in history]
