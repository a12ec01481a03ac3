"""Running a batch: each member trains into its own run directory, in this process or in worker
processes; finished runs are kept, interrupted ones resume from their checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.backends import Backend
from trainer.data.dataset import Dataset, load_dataset
from trainer.errors import TrainerError, UsageError
from trainer.fileio import atomic_write_json
from trainer.run.catalog import is_run_dir, read_run
from trainer.run.checkpoint import LATEST, PREVIOUS, load_checkpoint, save_checkpoint
from trainer.run.failures import recorded_failures
from trainer.run.results import Callbacks, DivergedError, Engine, EpochStats, Interrupted
from trainer.run.rundir import hold_run, run_metrics, run_record, write_run
from trainer.run.train import auto_blas_threads, load_backend, train

from .plan import Batch, Member

Event = dict[str, Any]  # what a run reports: {"event": "start" | "epoch" | "done" | "kept", ...}
WORKER_GRACE_SECONDS = 60  # after a stop request: a worker finishes its step and checkpoints
PARENT_POLL_SECONDS = 0.5  # where no parent-death signal exists: how often a worker looks


@dataclass(frozen=True)
class Place:
    """Where and on what a batch trains: its group directory, the data's fingerprint, the
    backend's device and the number of worker processes."""

    group: Path
    fingerprint: str
    data_dir: Path | None = None
    dataset: str = "mnist"
    device: str | None = None
    workers: int = 1
    checkpoint_every: int | None = None  # steps; every epoch in any case
    keep_checkpoints: bool = False  # a finished run keeps its previous checkpoint too


def kept(path: Path, dirname: str, on_event: Callable[[Event], None]) -> bool:
    """Whether a member's run directory holds a finished or diverged run, which is kept (and
    said so); a damaged one is refused (UsageError). False: train it (or resume it)."""
    if not (path.is_dir() and is_run_dir(path)):
        return False
    info = read_run(path)
    if info.state in ("finished", "diverged"):
        on_event({"event": "kept", "run": dirname, "state": info.state,
                  "test_accuracy": info.test_accuracy, "seconds": info.seconds})
        return True
    if info.state == "damaged":
        raise UsageError(f"{path} is damaged ({info.problem}): remove it and run the command "
                         f"again to train it anew")
    return False


def run_member(member: Member, batch: Batch, place: Place, data: Dataset, backend: Backend,
               on_event: Callable[[Event], None],
               stop_requested: Callable[[], int | None] | None = None) -> None:
    """Train one member into `group/<config>-seed<k>`: a finished (or diverged) run is kept,
    an interrupted one resumes from its checkpoint. Interrupted propagates (checkpoint written);
    a divergence is recorded in the run's metrics.json and reported as its state."""
    path, cfg = place.group / member.dirname, member.config
    state = None
    if kept(path, member.dirname, on_event):
        return
    if is_run_dir(path) and ((path / LATEST).exists() or (path / PREVIOUS).exists()):
        state = load_checkpoint(path)
        if state.run.get("config") != cfg.to_dict() or state.run.get("data") != \
                place.fingerprint:
            raise UsageError(f"{path}: its checkpoint is of another config or other data "
                             f"than this batch's; remove it to train it anew")
    path.mkdir(parents=True, exist_ok=True)
    record = run_record(cfg, member.dirname, batch.limit_train, batch.limit_test, data,
                        place.fingerprint, backend.name)
    with hold_run(path):  # a second batch on this group is refused this run, not given it
        if state is None:
            atomic_write_json(path / "config.json", cfg.to_dict())
        on_event({"event": "start", "run": member.dirname,
                  "resume_epoch": state.epoch if state else None})
        _train(member, batch, place, data, backend, path, record, state, on_event,
               stop_requested)


def _train(member: Member, batch: Batch, place: Place, data: Dataset, backend: Backend,
           path: Path, record: dict[str, Any], state: Any, on_event: Callable[[Event], None],
           stop_requested: Callable[[], int | None] | None) -> None:
    cfg = member.config

    def on_epoch(stats: EpochStats) -> None:
        on_event({"event": "epoch", "run": member.dirname, "stats": dataclasses.asdict(stats),
                  "epochs": cfg.epochs})

    threads: int | str | None = "auto"
    if place.workers > 1:  # oversubscribed BLAS threads slow every worker down
        threads = auto_blas_threads(cfg, backend) or max(1, (os.cpu_count() or 1)
                                                         // place.workers)
    callbacks = Callbacks(
        on_epoch=on_epoch, stop_requested=stop_requested, checkpoint_every=place.checkpoint_every,
        checkpoint=lambda st: save_checkpoint(path, dataclasses.replace(st, run=record)))
    try:
        with recorded_failures(path, cfg, backend, place.workers):
            result = train(cfg, data, backend, limit_train=batch.limit_train,
                           limit_test=batch.limit_test, resume=state, callbacks=callbacks,
                           engine=Engine(blas_threads=threads, prefetch=place.workers == 1))
    except DivergedError as e:  # recorded in its metrics.json; the batch goes on
        on_event({"event": "done", "run": member.dirname, "state": "diverged",
                  "message": str(e)})
        return
    metrics = run_metrics(result, data.class_names, backend.version, data, place.fingerprint)
    write_run(path, result, data.class_names, metrics, title=member.dirname,
              keep_checkpoints=place.keep_checkpoints)
    on_event({"event": "done", "run": member.dirname, "state": "finished",
              "test_accuracy": result.test_accuracy, "seconds": result.total_seconds})


def run_members(batch: Batch, place: Place, data: Dataset, backend: Backend,
                on_event: Callable[[Event], None],
                stop_requested: Callable[[], int | None] | None = None) -> None:
    """Every member, in this process (one worker) or in `place.workers` processes. A stop
    request ends it with Interrupted once the running members have checkpointed."""
    members = batch.members()
    if place.workers == 1 or len(members) == 1:
        for member in members:
            if stop_requested and (signum := stop_requested()):
                raise Interrupted(signum, 0, 0)
            run_member(member, batch, dataclasses.replace(place, workers=1), data, backend,
                       on_event, stop_requested)
        return
    _run_processes(members, batch, place, on_event, stop_requested or (lambda: None))


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Processes started in here ignore SIGINT from their start (Python then installs no
    KeyboardInterrupt handler): a Ctrl-C while a worker is still importing cannot end it
    with a traceback; each installs its own stop handler once it runs."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_processes(members: list[Member], batch: Batch, place: Place,
                   on_event: Callable[[Event], None],
                   stop_requested: Callable[[], int | None]) -> None:
    ctx = multiprocessing.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    count = min(place.workers, len(members))
    for member in members:
        tasks.put(member)
    for _ in range(count):
        tasks.put(None)  # one end mark per worker
    procs = [ctx.Process(target=_worker_main, args=(batch, place, tasks, events, os.getpid()),
                         daemon=False) for _ in range(count)]
    with _sigint_ignored():
        for p in procs:
            p.start()
    stopped: int | None = None
    errors: list[str] = []
    try:
        while any(p.is_alive() for p in procs) or not events.empty():
            stopped = stopped or _forward(stop_requested(), procs)
            with contextlib.suppress(queue.Empty):
                event = events.get(timeout=0.2)
                if event["event"] == "error":
                    errors.append(event["message"])
                    stopped = stopped or _forward(signal.SIGINT, procs)
                else:
                    on_event(event)
    except BaseException:  # a second Ctrl-C: the workers still write their checkpoints
        _forward(signal.SIGINT, procs)
        raise
    finally:
        for p in procs:
            p.join(timeout=WORKER_GRACE_SECONDS)
            if p.is_alive():
                p.terminate()
                p.join()
    if errors:
        raise TrainerError(errors[0])
    failed = [p.exitcode for p in procs if p.exitcode not in (0, 128 + (stopped or 0))]
    if failed:
        raise TrainerError(f"a worker process stopped with exit code {failed[0]}")
    if stopped:
        raise Interrupted(stopped, 0, 0)


def _forward(signum: int | None, procs: list[Any]) -> int | None:
    """Ask every live worker to stop (it checkpoints first); returns the signal."""
    if signum:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)
    return signum


def _die_with(parent: int) -> None:
    """SIGTERM this process when `parent` (the batch's driver) ends, however it ends (kill -9
    included): a worker left behind would train on alone and hold its runs' locks against the
    rerun. Linux's parent-death signal; elsewhere a thread that watches the parent's pid."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        armed = False
    if armed:
        if os.getppid() != parent:  # it ended before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker_main(batch: Batch, place: Place, tasks: Any, events: Any, parent: int) -> None:
    """A worker process: members from `tasks` until its end mark; SIGINT or SIGTERM (also sent
    when the driver dies) ask it to stop after the current step, checkpoint, and exit 128 + the
    signal."""
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)
    _die_with(parent)
    stop = lambda: received[0] if received else None  # noqa: E731
    try:
        _work(batch, place, tasks, events, stop, received)
    finally:
        if os.getppid() != parent:  # nobody reads the events now: do not wait to flush them
            events.cancel_join_thread()


def _work(batch: Batch, place: Place, tasks: Any, events: Any,
          stop: Callable[[], int | None], received: list[int]) -> None:
    try:
        data = load_dataset(place.data_dir, dataset=place.dataset)
        if data.fingerprint() != place.fingerprint:
            raise UsageError(f"the data in {data.path} changed while the batch ran")
        backend = load_backend(batch.backend, place.device)
        while not received and (member := tasks.get()) is not None:
            run_member(member, batch, place, data, backend, events.put, stop)
    except Interrupted as e:
        sys.exit(e.exit_code)
    except TrainerError as e:
        events.put({"event": "error", "message": str(e)})
        sys.exit(e.exit_code)
    except Exception as e:  # reported as one line by the parent, not a worker's traceback
        events.put({"event": "error", "message": f"{type(e).__name__}: {e}"})
        sys.exit(1)
    if received:
        sys.exit(128 + received[0])
