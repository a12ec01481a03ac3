"""Hyper-parameter sweeps on Optuna: one study in a database, local or remote workers, trials."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import Config
from trainer.data import Dataset, load_dataset
from trainer.errors import TrainerError, UsageError
from trainer.fileio import atomic_write_json
from trainer.runs import claim_run_dir, run_metrics, write_run
from trainer.sweep_report import retried_numbers, write_outputs
from trainer.sweep_space import Space, perturb_sampler
from trainer.train import EpochStats, auto_blas_threads, check_shapes, load_backend, train

SAMPLERS = ("tpe", "random", "grid", "perturb")
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
SQLITE_TIMEOUT = 60  # seconds a process waits for another's write on the SQLite file


@dataclass(frozen=True)
class SweepSettings:
    config: Config  # the base config, overrides applied; it needs a validation_split
    space: Space
    trials: int  # run until the study holds this many finished trials
    sweep_dir: Path
    study: str
    storage: str | None = None  # an SQLAlchemy URL; default sqlite:///<sweep_dir>/study.db
    sampler: str = "tpe"
    seed: int = 0
    backend: str = "numpy"
    device: str | None = None
    data_dir: Path | None = None
    limit_train: int | None = None
    timeout: float | None = None  # seconds after which no new trial starts
    workers: int = 1
    heartbeat: int = 30  # seconds; a RUNNING trial silent for 3x this is failed and retried
    max_retry: int = 3

    @property
    def url(self) -> str:
        return self.storage or f"sqlite:///{self.sweep_dir.resolve() / 'study.db'}"


def without_test(data: Dataset) -> Dataset:
    """The dataset with empty test arrays, built without reading the test set's pixels."""
    def empty(a: np.ndarray) -> np.ndarray:
        return np.empty((0, *a.shape[1:]), a.dtype)

    return replace(data, test_images=empty(data.train_images), test_labels=empty(data.train_labels))


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial (and a traceback per failed one): the sweep shows its own table."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)  # renamed heartbeat callbacks
        try:
            yield
        finally:
            optuna.logging.set_verbosity(level)


def open_study(s: SweepSettings, worker: int = 0) -> Any:
    """The study (created if new) with heartbeats, the retry of stale trials and the sampler."""
    import optuna
    from optuna.storages import RDBStorage

    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    kw = ({"heartbeat_stale_trial_callback": retry(max_retry=s.max_retry)} if retry else
          {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(s.max_retry)})
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if s.url.startswith("sqlite") else {}
    seed = s.seed + worker  # workers draw different points
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "grid": lambda: optuna.samplers.GridSampler(s.space.grid(), seed=seed),
               "perturb": lambda: perturb_sampler(s.space, seed)}[s.sampler]()
    for attempt in range(3):  # two machines creating the same new study race on its tables
        try:
            storage = RDBStorage(s.url, engine_kwargs=engine, heartbeat_interval=s.heartbeat,
                                 grace_period=3 * s.heartbeat, **kw)
            return optuna.create_study(
                storage=storage, study_name=s.study, sampler=sampler,
                pruner=optuna.pruners.MedianPruner(n_startup_trials=3), direction="maximize",
                load_if_exists=True)
        except Exception as e:  # SQLAlchemy's errors: a bad URL, no server, no driver
            if attempt == 2 or isinstance(e, TrainerError | ImportError | ValueError):
                raise UsageError(f"cannot open the sweep storage {_safe_url(s.url)}: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _safe_url(url: str) -> str:
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return "(unparsable URL)"


class AskLock:
    """Held from counting the study's trials to creating the next one, so that workers on one
    machine (a file lock) or on many (a PostgreSQL advisory lock) never start trial N+1."""

    def __init__(self, s: SweepSettings) -> None:
        sqlite = s.url.startswith("sqlite:///") and ":memory:" not in s.url
        self.path = Path(s.url.removeprefix("sqlite:///").split("?")[0] + ".lock") if sqlite else \
            s.sweep_dir / ".ask.lock"
        self.key = zlib.crc32(s.study.encode())  # one lock per study
        self.conn, self.fd = None, None
        if s.url.startswith("postgresql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(s.url, poolclass=sqlalchemy.pool.NullPool)
            self.conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def acquire(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        if self.conn is not None:
            self.conn.exec_driver_sql(f"SELECT pg_advisory_lock({self.key})")

    def release(self) -> None:
        if self.fd is None:
            return
        if self.conn is not None:
            self.conn.exec_driver_sql(f"SELECT pg_advisory_unlock({self.key})")
        os.close(self.fd)  # closing drops the flock
        self.fd = None


def counted(trials: list[Any]) -> int:
    """Finished trials (but those re-queued after their worker died) plus running ones."""
    retried = retried_numbers(trials)
    return sum(1 for t in trials if t.state.name == "RUNNING" or
               (t.state.name in FINISHED and t.number not in retried))


def target(s: SweepSettings) -> int:
    if s.sampler == "grid":
        return min(s.trials, int(np.prod([len(v) for v in s.space.grid().values()])))
    return s.trials


def start_study(s: SweepSettings) -> Any:
    """Create or resume the study; a new one first runs the config as given (the baseline)."""
    study = open_study(s)
    recorded = {"config": s.config.to_dict(), "space": s.space.to_json(),
                "limit_train": s.limit_train}
    lock = AskLock(s)
    lock.acquire()
    try:
        if not study.get_trials(deepcopy=False):
            old = s.sweep_dir / "trials"
            if old.is_dir() and any(old.iterdir()):
                raise UsageError(f"{s.sweep_dir} holds the trials of another sweep, but study "
                                 f"{s.study!r} is new: choose another --sweep-dir or --study")
            study.set_user_attr("sweep", recorded)
            baseline = s.space.baseline(s.config)
            if baseline is not None and s.sampler != "grid":
                study.enqueue_trial(baseline, user_attrs={"baseline": True})
    finally:
        lock.release()
    before = study.user_attrs.get("sweep")
    if before is not None and before != recorded:
        what = [k for k in recorded if before.get(k) != recorded[k]]
        raise UsageError(f"study {s.study!r} in {_safe_url(s.url)} was run with a different "
                         f"{' and '.join(what)}; resume it with the same config, space and "
                         f"options, or start a new one with --study")
    return study


def run_trial(trial: Any, s: SweepSettings, data: Dataset, lock: AskLock,
              on_update: Callable[[], None]) -> float:
    """The objective: train on the training split, return the best validation accuracy.
    A failure is recorded on the trial (and in its run directory) and raised to Optuna."""
    import optuna

    lock.release()  # the trial exists now: the next worker may count it
    trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
    history: list[EpochStats] = []
    run_dir = None
    try:
        params = s.space.suggest(trial)
        run_dir = claim_run_dir(s.sweep_dir / "trials" / str(trial.number), "trial")
        return _train_trial(trial, s, data, params, run_dir, history, on_update)
    except BaseException as e:
        pruned = isinstance(e, optuna.TrialPruned)
        error = "interrupted" if isinstance(e, KeyboardInterrupt) else \
            str(e) if isinstance(e, TrainerError | optuna.TrialPruned) else \
            f"{type(e).__name__}: {e}"
        trial.set_user_attr("pruned" if pruned else "error", error)
        if isinstance(e, KeyboardInterrupt):  # run it again when the sweep is resumed
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        if run_dir is not None:
            atomic_write_json(run_dir / "metrics.json", {
                "state": "PRUNED" if pruned else "FAIL", "message": error,
                "epochs": [vars(h) for h in history]})
        raise


def _train_trial(trial: Any, s: SweepSettings, data: Dataset, params: dict[str, Any],
                 run_dir: Path, history: list[EpochStats], on_update: Callable[[], None]) -> float:
    import optuna

    cfg = s.space.apply(s.config, params, source=f"trial {trial.number}")
    atomic_write_json(run_dir / "config.json", cfg.to_dict())

    def on_epoch(stats: EpochStats) -> None:
        history.append(stats)
        trial.report(stats.val_accuracy, stats.epoch)
        on_update()
        if stats.epoch < cfg.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {stats.epoch}: validation accuracy "
                                     f"{stats.val_accuracy:.2%} is below the median")

    be = load_backend(s.backend, s.device)
    threads = auto_blas_threads(cfg, be)
    if threads is None and s.workers > 1:  # oversubscribed BLAS threads slow all workers down
        threads = max(1, (os.cpu_count() or 1) // s.workers)
    result = train(cfg, data, be, limit_train=s.limit_train, on_epoch=on_epoch,
                   blas_threads=threads, test=False)
    classes = [str(c) for c in range(data.num_classes)]
    best = result.best()
    metrics = run_metrics(result, classes, be.version, data) | {
        "trial": trial.number, "params": params, "test_accuracy": None,
        "validation_accuracy": best.val_accuracy if best else None}
    write_run(run_dir, result, classes, {k: v for k, v in metrics.items() if v is not None},
              title=f"trial {trial.number}")
    trial.set_user_attr("best_epoch", best.epoch if best else None)
    return max(h.val_accuracy or 0.0 for h in result.history)


def work(s: SweepSettings, data: Dataset | None = None, worker: int = 0,
         on_update: Callable[[], None] = lambda: None) -> None:
    """One worker: start trials until the study has enough, then wait for the running ones
    (a stale one, whose worker died, is failed after the grace period and run again)."""
    import optuna

    data = without_test(data if data is not None else load_dataset(s.data_dir, quiet=True))
    deadline = time.time() + s.timeout if s.timeout else None
    with quiet_optuna():
        study, lock, goal = open_study(s, worker), AskLock(s), target(s)
        while deadline is None or time.time() < deadline:
            lock.acquire()
            try:
                optuna.storages.fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                if counted(trials) < goal:
                    study.optimize(lambda t: run_trial(t, s, data, lock, on_update),
                                   n_trials=1, catch=(Exception,))
                    on_update()
                    continue
            finally:
                lock.release()
            if not any(t.state.name == "RUNNING" for t in trials):
                return
            on_update()
            time.sleep(min(1.0, s.heartbeat / 2))


def _worker_main(s: SweepSettings, worker: int) -> None:
    """A worker process (spawned): errors become one line, Ctrl-C a quiet exit."""
    try:
        work(s, worker=worker)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except TrainerError as e:
        print(f"error: worker {worker}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None


def run_sweep(s: SweepSettings, data: Dataset | None = None,
              on_update: Callable[..., None] = lambda study, force=False: None) -> dict[str, Any]:
    """Run (or resume) a sweep and write its outputs; returns the summary. `on_update(study)` is
    called after every epoch (one worker) or every second (worker processes), and
    `on_update(study, True)` at the end."""
    if s.sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {s.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not s.config.validation_split:
        raise UsageError("a sweep scores trials on a validation split: set validation_split")
    if s.sampler == "grid":
        s.space.grid()  # says which parameter is not a grid
    s.space.check(s.config)  # before loading (or fetching) any data
    require_optuna()
    load_backend(s.backend, s.device)
    data = data if data is not None else load_dataset(s.data_dir, quiet=True)
    s.space.check(s.config, lambda cfg: check_shapes(cfg, data))
    s.sweep_dir.mkdir(parents=True, exist_ok=True)
    with quiet_optuna():
        study = start_study(s)
    started = time.time()
    try:
        if s.workers == 1:
            work(s, data, 0, lambda: on_update(study))
        else:
            _run_processes(s, study, on_update)
    finally:
        with quiet_optuna():
            on_update(study, True)
            summary = write_outputs(study, s, time.time() - started)
    return summary


def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as e:
        raise UsageError(f"sweeps need Optuna and SQLAlchemy ({e}): "
                         f"pip install 'trainer[sweep]'") from None


def _run_processes(s: SweepSettings, study: Any, on_update: Callable[..., None]) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(s, i), daemon=False)
             for i in range(s.workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            on_update(study)
            time.sleep(1.0)
    except BaseException:
        for p in procs:  # as Ctrl-C in a terminal would: each records its trial and stops
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGINT)
        raise
    finally:
        for p in procs:  # Ctrl-C reached them too; give them time to record their trials
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [i for i, p in enumerate(procs) if p.exitcode not in (0, 130, -2)]
    if failed:
        raise TrainerError(f"worker {failed[0]} stopped with exit code "
                           f"{procs[failed[0]].exitcode} (its message is above)")
