"""A sweep on a Dask cluster: `--workers K` trial workers, each one Dask task running `work` on
the shared study; their trials' run directories come back to the driver's sweep directory.

The study's storage must be reachable from every worker: PostgreSQL (any server URL), or, when
the scheduler is on loopback (so every worker is on this machine), the SQLite file. Optuna's
DaskStorage (the study in the scheduler's memory) was tried: it has no heartbeats, so a killed
worker's trial would stay RUNNING for ever, and the study is lost with the scheduler."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from trainer.batch.connect import (
    Cluster,
    check_address,
    check_workers,
    connect,
    is_loopback,
    probe,
    wants_gpu,
)
from trainer.batch.remote import worker_data
from trainer.batch.rundirs import write_run_dir
from trainer.data.dataset import Dataset
from trainer.errors import TrainerError, UsageError
from trainer.run.train import load_backend
from trainer.sweep.run import work
from trainer.sweep.settings import SweepSettings

POLL_SECONDS = 1.0  # the table re-reads the study from its database: once a second
STOP_POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 30  # after Ctrl-C: the workers finish their trials and send them back


def check_storage(settings: SweepSettings, cluster: Cluster) -> None:
    """A remote cluster's workers cannot open this machine's SQLite file: refused, saying
    what to use. In-memory SQLite is nobody else's at all."""
    url = settings.url
    if url.startswith("sqlite") and (":memory:" in url or url.rstrip("/") == "sqlite:"):
        raise UsageError("an in-memory SQLite study cannot be shared with cluster workers")
    if url.startswith("sqlite") and not is_loopback(check_address(cluster.address)):
        raise UsageError(f"the study is in a SQLite file on this machine ({settings.url}), "
                         f"which the workers of {cluster.address} cannot open: give "
                         f"--storage postgresql+psycopg2://USER:PASSWORD@HOST/DB, a PostgreSQL "
                         f"server every worker reaches")


def cluster_executor(settings: SweepSettings, cluster: Cluster, data: Dataset, fingerprint: str
                     ) -> Callable[[SweepSettings, Any, Callable[..., None]], None]:
    """run_sweep's executor: the settings' workers as Dask tasks on `cluster` (its storage
    checked now, and the scheduler reached, before the sweep writes anything)."""
    check_storage(settings, cluster)
    probe(check_address(cluster.address))

    def execute(settings: SweepSettings, study: Any, on_update: Callable[..., None]) -> None:
        gpu = wants_gpu(cluster, settings.backend, settings.device)
        with connect(cluster) as client:
            check_workers(client, gpu)
            from distributed import Event

            name = f"trainer-sweep-{uuid.uuid4().hex[:12]}"
            shipped = client.scatter(data, hash=False) if cluster.ship_data else None
            remote = dataclasses.replace(settings, storage=settings.url, workers=1)
            futures = [client.submit(trial_worker, remote, shipped, fingerprint, name,
                                     key=f"{name}-{i}", pure=False,
                                     resources={"GPU": 1} if gpu else None)
                       for i in range(settings.workers)]
            stop = Event(name, client=client)
            try:
                _collect(futures, settings, study, on_update)
            except BaseException:
                stop.set()  # each finishes its trial (recorded), then starts no other
                with contextlib.suppress(TrainerError):  # a second Ctrl-C: at once
                    _collect(futures, settings, study, on_update,
                             time.monotonic() + STOP_GRACE_SECONDS)
                raise
            finally:
                client.cancel(list(futures), force=True)
    return execute


def _collect(futures: list[Any], settings: SweepSettings, study: Any,
             on_update: Callable[..., None], deadline: float = float("inf")) -> None:
    """Each trial worker's trials written into the sweep directory as it ends (and taken out
    of `futures`); TrainerError naming the first that failed. Gives up at `deadline`."""
    errors = []
    pending = futures
    while pending and time.monotonic() < deadline:
        on_update(study)
        for future in [f for f in pending if f.done()]:
            pending.remove(future)
            try:
                result = future.result()
            except Exception as e:  # KilledWorker after the scheduler's retries
                errors.append(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
                continue
            (settings.sweep_dir / "trials").mkdir(exist_ok=True)
            for number, files in result["trials"].items():
                write_run_dir(settings.sweep_dir / "trials" / number, files)
            if result.get("error"):
                errors.append(f"on {result['worker']}: {result['error']}")
        time.sleep(POLL_SECONDS if pending else 0)
    if errors:
        raise TrainerError(f"a sweep worker failed {errors[0]}")


def trial_worker(settings: SweepSettings, shipped: Dataset | None, fingerprint: str,
                 stop_name: str) -> dict[str, Any]:
    """One trial worker on a Dask worker: `work` with the worker's data and threads, in a
    temporary sweep directory whose trials go back to the driver."""
    from distributed import Event, get_worker

    worker = get_worker()
    out: dict[str, Any] = {"worker": worker.address, "trials": {}}
    stop, asked = Event(stop_name), [0.0, False]

    def should_stop() -> bool:
        if not asked[1] and time.monotonic() - asked[0] >= STOP_POLL_SECONDS:
            asked[0], asked[1] = time.monotonic(), stop.is_set()
        return asked[1]

    with tempfile.TemporaryDirectory(prefix="trainer-sweep-",
                                     dir=worker.local_directory) as tmp:
        try:
            data = shipped if shipped is not None else worker_data(
                settings.dataset, fingerprint, worker.address)
            backend = load_backend(settings.backend, settings.device)
            with threadpool_limits(limits=worker.state.nthreads, user_api="blas"):
                work(dataclasses.replace(settings, sweep_dir=Path(tmp)), data, backend,
                     should_stop=should_stop)
        except TrainerError as e:
            out["error"] = str(e)
        except Exception as e:  # one line on the driver, never a worker's traceback
            out["error"] = f"{type(e).__name__}: {e}"
        trials = Path(tmp) / "trials"
        if trials.is_dir():
            out["trials"] = {d.name: {p.name: p.read_bytes() for p in d.iterdir()
                                      if p.is_file() and not p.name.startswith(".")}
                             for d in trials.iterdir() if d.is_dir()}
    return out
