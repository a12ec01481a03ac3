"""What a Dask worker runs for a batch on a cluster: one member, trained with the local batch's
own `run_member` into a temporary folder on the worker, whose files come back to the driver.

Nothing here assumes a filesystem shared with the driver: the data is the worker's own (its
TRAINER_DATA_DIR or cache, checked against the driver's SHA-256) or shipped through the cluster.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from trainer.data.dataset import Dataset, load_dataset
from trainer.errors import TrainerError
from trainer.run.results import Interrupted
from trainer.run.rundir import CLAIM
from trainer.run.train import load_backend

from .plan import Batch, Member
from .run import Place, run_member

STOP_POLL_SECONDS = 0.25  # a stop request is a round trip to the scheduler: asked now and then
_data_lock = threading.Lock()
_data_cache: dict[str, tuple[Dataset, str]] = {}


@dataclass(frozen=True)
class Task:
    """One member as the driver sends it: the resolved config and seed (in `member`), the
    batch (backend, limits), the dataset's name and SHA-256, and the files of a run to resume
    (config.json and checkpoints), if there is one."""

    member: Member
    batch: Batch
    dataset: str
    fingerprint: str
    device: str | None = None
    stop_event: str = ""  # the name of the distributed.Event that asks the run to stop
    topic: str = ""  # the event topic its progress is published on
    resume_files: dict[str, bytes] = field(default_factory=dict)


def worker_versions() -> dict[str, str]:
    """What a worker runs, compared with the driver's before anything is sent: trainer's own
    code (a digest of its sources, so that two checkouts of one version still differ), Python
    and the libraries that pickle and train."""
    import cloudpickle
    import distributed
    import numpy

    return {"trainer code": code_digest(), "python": ".".join(platform.python_version_tuple()[:2]),
            "numpy": numpy.__version__, "distributed": distributed.__version__,
            "cloudpickle": cloudpickle.__version__}


@functools.cache
def code_digest() -> str:
    """SHA-256 (16 hex digits) of trainer's .py files, backends/ included (a symlink in a
    checkout, a folder once installed), by path relative to the package."""
    root = Path(__file__).resolve().parent.parent
    backends = (root / "backends").resolve()
    files = {str(p.relative_to(root)): p for p in root.rglob("*.py")}
    files |= {f"backends/{p.relative_to(backends)}": p for p in backends.rglob("*.py")}
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].read_bytes())
    return h.hexdigest()[:16]


def run_task(task: Task, shipped: Dataset | None = None) -> dict[str, Any]:
    """Train the task's member on this worker; returns its state ("finished", "diverged",
    "interrupted" or "failed" with a message), where it ran, and the files it wrote."""
    from distributed import get_worker

    worker = get_worker()
    where = {"worker": worker.address, "host": platform.node(),
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
             "nthreads": worker.state.nthreads}
    out: dict[str, Any] = {"run": task.member.dirname, **where}
    try:
        data = shipped if shipped is not None else worker_data(task.dataset, task.fingerprint,
                                                               worker.address)
        # the worker's thread count, not the driver's: BLAS never oversubscribes the worker
        with tempfile.TemporaryDirectory(prefix="trainer-", dir=worker.local_directory) as tmp, \
                threadpool_limits(limits=worker.state.nthreads, user_api="blas"):
            out["state"], out["files"] = _train_here(task, data, Path(tmp), worker, where)
    except TrainerError as e:
        out |= {"state": "failed", "message": str(e)}
    except Exception as e:  # reported as one line by the driver, never as a worker traceback
        out |= {"state": "failed", "message": f"{type(e).__name__}: {e}"}
    return out


def _train_here(task: Task, data: Dataset, tmp: Path, worker: Any, where: dict[str, Any]
                ) -> tuple[str, dict[str, bytes]]:
    """run_member into `tmp`, publishing its progress; its state and files (with the run's
    worker.log, and where it ran in metrics.json)."""
    log = [_line(f"{task.member.dirname} on {worker.address} (host {where['host']}, "
                 f"{where['nthreads']} thread(s), CUDA_VISIBLE_DEVICES="
                 f"{where['cuda_visible_devices']})")]

    def publish(event: dict[str, Any]) -> None:  # the driver reports the outcome itself
        log.append(_line(_describe(event)))
        if task.topic and event["event"] in ("start", "epoch"):
            worker.log_event(task.topic, event | {"worker": worker.address, "time": time.time()})

    backend = load_backend(task.batch.backend, task.device)
    folder = tmp / task.member.dirname
    _restore(folder, task.resume_files)
    place = Place(tmp, task.fingerprint, None, task.dataset, task.device)
    try:
        run_member(task.member, task.batch, place, data, backend, publish,
                   _stop_flag(task.stop_event))
        state = _state(folder)
    except Interrupted:
        state = "interrupted"
    log.append(_line(state))
    _note_where(folder, where)
    (folder / "worker.log").write_text("\n".join(log) + "\n")
    return state, {p.name: p.read_bytes() for p in sorted(folder.iterdir())
                   if p.is_file() and p.name != CLAIM}


def worker_data(dataset: str, fingerprint: str, worker: str) -> Dataset:
    """The worker's own copy of the dataset (its TRAINER_DATA_DIR or cache, never a path of
    the driver's), loaded once per worker process and checked against the driver's SHA-256."""
    key = dataset
    with _data_lock:
        if key not in _data_cache:
            try:
                data = load_dataset(None, dataset=dataset, fetch=False)
            except TrainerError as e:
                raise TrainerError(f"worker {worker} has no copy of the dataset {dataset} "
                                   f"({e}); fetch it there (`trainer data fetch`) or pass "
                                   f"--ship-data") from None
            _data_cache[key] = data, data.fingerprint()
        data, sha = _data_cache[key]
    if sha != fingerprint:
        raise TrainerError(f"worker {worker} has other data for {dataset} in {data.path}: "
                           f"SHA-256 {sha} there, {fingerprint} on the driver; give it "
                           f"the driver's files, or pass --ship-data")
    return data


def _restore(folder: Path, files: dict[str, bytes]) -> None:
    """The run to resume, as the driver has it (its config and checkpoints)."""
    if files:
        folder.mkdir(parents=True)
        for name, blob in files.items():
            (folder / Path(name).name).write_bytes(blob)


def _stop_flag(name: str) -> Any:
    """stop_requested for the loop: SIGINT once the driver sets the batch's stop event."""
    if not name:
        return None
    from distributed import Event

    event, asked = Event(name), [0.0, False]

    def stop_requested() -> int | None:
        now = time.monotonic()
        if not asked[1] and now - asked[0] >= STOP_POLL_SECONDS:
            asked[0], asked[1] = now, event.is_set()
        return 2 if asked[1] else None  # SIGINT: the driver's Ctrl-C
    return stop_requested


def _line(text: str) -> str:
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}"


def _describe(event: dict[str, Any]) -> str:
    """An event of run_member's as a line of the run's worker.log."""
    if event["event"] == "epoch":
        stats = event["stats"]
        held = stats.get("val_accuracy") if stats.get("val_accuracy") is not None else \
            stats.get("test_accuracy")
        return (f"epoch {stats['epoch']}/{event['epochs']} loss {stats['loss']:.4f} train "
                f"{stats['train_accuracy']:.2%}" + (f" held-out {held:.2%}" if held is not None
                                                     else "") + f" {stats['seconds']:.2f} s")
    if event["event"] == "start":
        return f"resuming at epoch {event['resume_epoch']}" if event["resume_epoch"] else \
            "training"
    return " ".join(f"{k}={v}" for k, v in event.items() if k != "run")


def _state(folder: Path) -> str:
    metrics = json.loads((folder / "metrics.json").read_text())
    return "diverged" if metrics.get("diverged") else "finished"


def _note_where(folder: Path, where: dict[str, Any]) -> None:
    """metrics.json says which worker trained the run, and the device that worker saw."""
    path = folder / "metrics.json"
    if path.is_file():
        metrics = json.loads(path.read_text())
        path.write_text(json.dumps(metrics | {"cluster": where}, indent=2) + "\n")
