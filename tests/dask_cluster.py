"""A real Dask cluster on loopback for the tests: `dask scheduler` and `dask worker` processes,
each told --host 127.0.0.1 (dashboards on 127.0.0.1 too), always torn down.

The workers find trainer through PYTHONPATH (this checkout) and the data through
TRAINER_DATA_DIR; one declares a GPU (resources GPU=1, CUDA_VISIBLE_DEVICES=0).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]
START_SECONDS = 60


@dataclass
class LocalCluster:
    address: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    security: dict[str, str] = field(default_factory=dict)  # TLS files for a client

    def client(self, **kwargs: object):
        from distributed import Client
        from distributed.security import Security

        security = Security(require_encryption=True, **self.security) if self.security else None
        return Client(self.address, timeout=10, set_as_default=False, security=security,
                      **kwargs)


def worker_env(data_dir: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"PYTHONPATH": path, "TRAINER_DATA_DIR": str(data_dir)} | extra


@contextlib.contextmanager
def start_cluster(folder: Path, data_dir: Path, workers: int = 2, gpu_worker: bool = True,
                  tls: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """A scheduler and `workers` workers (each --nthreads 1, with a nanny, which restarts a
    worker process that is killed); the first declares a GPU if `gpu_worker`."""
    protocol = ["--protocol", "tls"] if tls else []
    tls_args = [] if not tls else ["--tls-ca-file", tls["tls_ca_file"], "--tls-cert",
                                   tls["tls_client_cert"], "--tls-key", tls["tls_client_key"]]
    file = folder / "scheduler.json"
    cluster = LocalCluster("", security=dict(tls or {}))
    env = worker_env(data_dir)
    log = open(folder / "cluster.log", "ab")  # noqa: SIM115 (closed below)
    try:
        cluster.procs.append(subprocess.Popen(
            [*DASK, "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", str(file), *protocol, *tls_args],
            env=env, stdout=log, stderr=log, cwd=folder, start_new_session=True))
        cluster.address = _wait_address(file, cluster.procs[0])
        for i in range(workers):
            extra = {"CUDA_VISIBLE_DEVICES": "0"} if gpu_worker and i == 0 else {}
            resources = ["--resources", "GPU=1"] if extra else []
            cluster.procs.append(subprocess.Popen(
                [*WORKER, cluster.address, "--host", "127.0.0.1", "--nthreads", "1",
                 "--dashboard-address", "127.0.0.1:0", "--name", f"w{i}", *resources,
                 "--death-timeout", "60",  # gone with the scheduler, even if pytest is killed
                 "--local-directory", str(folder / f"w{i}"), *tls_args],
                env=worker_env(data_dir, **extra), stdout=log, stderr=log, cwd=folder,
                start_new_session=True))
        wait_workers(cluster, workers)
        yield cluster
    finally:
        stop(cluster.procs)
        log.close()


def _wait_address(file: Path, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with {proc.returncode}")
        with contextlib.suppress(OSError, ValueError, KeyError):
            return json.loads(file.read_text())["address"]
        time.sleep(0.1)
    raise RuntimeError("dask scheduler did not start")


def wait_workers(cluster: LocalCluster, count: int) -> None:
    """Until `count` workers are registered with the scheduler."""
    deadline = time.monotonic() + START_SECONDS
    with cluster.client() as client:
        while len(client.scheduler_info(n_workers=-1)["workers"]) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} dask workers did not register")
            time.sleep(0.2)


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group (a nanny and its worker), SIGKILL after 10 s."""
    for proc in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def listening(procs: list[subprocess.Popen]) -> list[tuple[str, int]]:
    """Every (address, port) the processes and their children listen on."""
    import psutil

    pids = set()
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(proc.pid)
            pids |= {parent.pid, *(c.pid for c in parent.children(recursive=True))}
    return [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]
