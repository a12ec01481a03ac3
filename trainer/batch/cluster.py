"""A batch on a Dask cluster: each member is one Dask task (remote.run_task), its files come
back to the driver, which alone writes the group directory, a run directory at a time,
atomically. Finished runs are kept; the same command again trains only what is missing."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.data.dataset import Dataset
from trainer.run.catalog import is_run_dir, read_run
from trainer.run.checkpoint import LATEST, PREVIOUS
from trainer.run.results import Interrupted
from trainer.run.rundir import hold_run

from .connect import Cluster, check_workers, connect, wants_gpu
from .plan import Batch, Member, open_group
from .remote import Task, run_task
from .run import Event, Place, kept
from .rundirs import write_run_dir
from .summary import summarise, write_summary

STOP_GRACE_SECONDS = 30  # after Ctrl-C: the running tasks checkpoint and send their files
POLL_SECONDS = 0.2


def train_on_cluster(batch: Batch, data: Dataset, cluster: Cluster, where: Place,
                     run_dir: Path | None, root: Path, on_event: Callable[[Event], None],
                     stop_requested: Callable[[], int | None] | None,
                     on_group: Callable[[Path, bool], None]) -> dict[str, Any]:
    """train_batch's cluster half: connected and checked before the group directory is made
    (`where`: the Place but for its group), run, summarised with the runs that failed."""
    with connect(cluster) as client:
        check_workers(client, wants_gpu(cluster, batch.backend, where.device))
        group, resumed = open_group(batch, where.fingerprint, run_dir, root)
        on_group(group, resumed)
        place = Place(group, where.fingerprint, where.data_dir, where.dataset, where.device)
        failed = run_cluster(client, batch, place, data, cluster, on_event, stop_requested)
    summary, runs = summarise(batch, group)
    write_summary(group, summary | {"failed": failed}, runs)
    return summary | {"failed": failed}


def run_cluster(client: Any, batch: Batch, place: Place, data: Dataset, cluster: Cluster,
                on_event: Callable[[Event], None],
                stop_requested: Callable[[], int | None] | None = None) -> list[dict[str, Any]]:
    """Train every member not yet finished on the cluster `client` is connected to (checked
    by check_workers); returns the runs that failed (run, worker, message). Interrupted
    (finished runs written, running ones checkpointed) once a stop is requested."""
    todo = _plan(batch, place, on_event)
    if not todo:
        return []
    gpu = wants_gpu(cluster, batch.backend, place.device)
    with hold_run(place.group):
        from distributed import Event as DaskEvent

        name = f"trainer-{uuid.uuid4().hex[:12]}"
        events: queue.Queue[Event] = queue.Queue()
        client.subscribe_topic(name, lambda item: events.put(item[1]))
        stop = DaskEvent(name, client=client)
        shipped = client.scatter(data, hash=False) if cluster.ship_data else None
        futures = {}
        try:
            for member, files in todo:
                task = Task(member, batch, place.dataset, place.fingerprint, place.device,
                            name, name, files)
                futures[client.submit(run_task, task, shipped, key=f"{name}-{member.dirname}",
                                      pure=False, resources={"GPU": 1} if gpu else None)] = member
                on_event({"event": "queued", "run": member.dirname})
            return _collect(client, futures, place, events, on_event, stop,
                            stop_requested or (lambda: None))
        except BaseException:  # a second Ctrl-C, or the Python API's KeyboardInterrupt
            stop.set()  # the running tasks stop too, not only the queued ones
            raise
        finally:
            client.cancel(list(futures), force=True)
            client.unsubscribe_topic(name)


def _plan(batch: Batch, place: Place, on_event: Callable[[Event], None]
          ) -> list[tuple[Member, dict[str, bytes]]]:
    """The members to train, with the files of each one to resume (config and checkpoints);
    the finished and diverged ones are kept (and said so)."""
    todo = []
    for member in batch.members():
        path, files = place.group / member.dirname, {}
        if kept(path, member.dirname, on_event):
            continue
        if is_run_dir(path):
            files = {n: (path / n).read_bytes() for n in ("config.json", LATEST, PREVIOUS)
                     if (path / n).is_file()}
        todo.append((member, files))
    return todo


def _collect(client: Any, futures: dict[Any, Member], place: Place, events: queue.Queue,
             on_event: Callable[[Event], None], stop: Any,
             stop_requested: Callable[[], int | None]) -> list[dict[str, Any]]:
    """Write each run as its task finishes; on a stop request, cancel the queued tasks and
    give the running ones STOP_GRACE_SECONDS to checkpoint, then raise Interrupted."""
    pending, started, failed = dict(futures), set(), []
    stopped: int | None = None
    deadline = float("inf")
    while pending and time.monotonic() < deadline:
        while not events.empty():
            event = events.get()
            started.add(event.get("run"))
            on_event(event)
        if stopped is None and (stopped := stop_requested()):
            stop.set()
            queued = [f for f, m in pending.items() if m.dirname not in started]
            client.cancel(queued, force=True)
            for f in queued:
                on_event({"event": "cancelled", "run": pending.pop(f).dirname})
            deadline = time.monotonic() + STOP_GRACE_SECONDS
        for future in [f for f in pending if f.done()]:
            failure = _finish(future, pending.pop(future), place, on_event)
            if failure:
                failed.append(failure)
        time.sleep(POLL_SECONDS)
    for future, member in pending.items():  # past the grace: no checkpoint came back from it
        future.cancel()
        on_event({"event": "cancelled", "run": member.dirname,
                  "message": f"no checkpoint came back within {STOP_GRACE_SECONDS} s; the same "
                             f"command again trains it from its last one in the group, if any"})
    if stopped:
        raise Interrupted(stopped, 0, 0)
    return failed


def _finish(future: Any, member: Member, place: Place,
            on_event: Callable[[Event], None]) -> dict[str, Any] | None:
    """A finished task: its run written into the group (or its failure returned)."""
    run = member.dirname
    try:
        result = future.result()
    except Exception as e:  # KilledWorker after the scheduler's retries, a lost scheduler
        result = {"state": "failed", "worker": None,
                  "message": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    if result["state"] == "failed":
        on_event({"event": "failed", "run": run, "worker": result["worker"],
                  "message": result["message"]})
        return {"run": run, "worker": result["worker"], "message": result["message"]}
    write_run_dir(place.group / run, result["files"])
    if result["state"] == "interrupted":
        on_event({"event": "stopped", "run": run, "worker": result["worker"]})
        return None
    info = read_run(place.group / run)
    message = {"message": info.metrics["message"]} if info.state == "diverged" else {}
    on_event({"event": "done", "run": run, "state": info.state, "worker": result["worker"],
              "test_accuracy": info.test_accuracy, "seconds": info.seconds} | message)
    return None
