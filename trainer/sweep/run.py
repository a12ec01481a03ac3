"""Hyper-parameter sweeps on Optuna: one study in a database, local or remote workers, trials."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.backends import Backend
from trainer.data.dataset import Dataset, load_dataset
from trainer.errors import TrainerError, UsageError
from trainer.fileio import atomic_write_json
from trainer.run.results import Callbacks, Engine, EpochStats
from trainer.run.rundir import claim_run_dir, run_metrics, write_run
from trainer.run.train import auto_blas_threads, check_data, load_backend, train
from trainer.sweep.report import write_outputs
from trainer.sweep.settings import SweepSettings
from trainer.sweep.space import load_space
from trainer.sweep.study import (
    SAMPLERS,
    AskLock,
    counted,
    make_sampler,
    open_study,
    quiet_optuna,
    require_optuna,
    safe_url,
    start_study,
    target,
)

__all__ = ["SAMPLERS", "SweepSettings", "load_space", "run_sweep", "work"]

SAMPLER_SEEDS = 2**32  # seeds Optuna's samplers take: 0 <= seed < this
# seconds a worker process gets, after Ctrl-C, to record its trial and stop
WORKER_GRACE_SECONDS = 30
# a worker's exit codes that are not failures: done, or stopped by Ctrl-C (its own exit 130,
# or -SIGINT when the signal ended it before Python could turn it into an exit code)
WORKER_STOPPED_CLEANLY = (0, 130, -int(signal.SIGINT))


def run_trial(trial: Any, settings: SweepSettings, data: Dataset, backend: Backend,
              lock: AskLock, on_update: Callable[[], None]) -> float:
    """The objective: train on the training split, return the best validation accuracy.
    A failure is recorded on the trial (and in its run directory) and raised to Optuna."""
    import optuna

    lock.release()  # the trial exists now: the next worker may count it
    trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
    history: list[EpochStats] = []
    run_dir = None
    try:
        params = settings.space.suggest(trial)
        run_dir = claim_run_dir(settings.sweep_dir / "trials" / str(trial.number), "trial")
        return _train_trial(trial, settings, data, backend, params, run_dir, history,
                            on_update)
    except BaseException as e:
        pruned = isinstance(e, optuna.TrialPruned)
        error = "interrupted" if isinstance(e, KeyboardInterrupt) else \
            str(e) if isinstance(e, TrainerError | optuna.TrialPruned) else \
            f"{type(e).__name__}: {e}"
        trial.set_user_attr("pruned" if pruned else "error", error)
        if isinstance(e, KeyboardInterrupt):  # run it again when the sweep is resumed
            keep = {k: v for k, v in trial.user_attrs.items() if k == "baseline"}
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number} | keep)
        if run_dir is not None:
            atomic_write_json(run_dir / "metrics.json", {
                "state": "PRUNED" if pruned else "FAIL", "message": error,
                "epochs": [vars(h) for h in history]})
        raise


def _train_trial(trial: Any, settings: SweepSettings, data: Dataset, backend: Backend,
                 params: dict[str, Any], run_dir: Path, history: list[EpochStats],
                 on_update: Callable[[], None]) -> float:
    import optuna

    cfg = settings.space.apply(settings.config, params, source=f"trial {trial.number}")
    atomic_write_json(run_dir / "config.json", cfg.to_dict())

    def on_epoch(stats: EpochStats) -> None:
        history.append(stats)
        trial.report(stats.val_accuracy, stats.epoch)
        on_update()
        if stats.epoch < cfg.epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {stats.epoch}: below the median")

    threads = auto_blas_threads(cfg, backend)
    if threads is None and settings.workers > 1:  # oversubscribed BLAS threads slow them all
        threads = max(1, (os.cpu_count() or 1) // settings.workers)
    # the test set is never touched (limit_test=0): trials are scored on the validation split
    result = train(cfg, data, backend, limit_train=settings.limit_train, limit_test=0,
                   callbacks=Callbacks(on_epoch=on_epoch),
                   engine=Engine(blas_threads=threads, prefetch=settings.workers == 1))
    best = result.best()  # by validation accuracy: a sweep always has a validation split
    value = best.val_accuracy if best is not None and best.val_accuracy is not None else 0.0
    metrics = run_metrics(result, data.class_names, backend.version, data) | {
        "trial": trial.number, "params": params, "validation_accuracy": value}
    write_run(run_dir, result, data.class_names, metrics, title=f"trial {trial.number}")
    trial.set_user_attr("best_epoch", best.epoch if best else None)
    return value


def work(settings: SweepSettings, data: Dataset | None = None, backend: Backend | None = None,
         on_update: Callable[[], None] = lambda: None,
         should_stop: Callable[[], bool] = lambda: False) -> None:
    """One worker: start trials until the study has enough, then wait for the running ones
    (a stale one, whose worker died, is failed after the grace period and run again).
    `should_stop`: asked before each trial (a cluster's driver was stopped)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    data = data if data is not None else load_dataset(settings.data_dir, dataset=settings.dataset)
    backend = backend or load_backend(settings.backend, settings.device)
    deadline = time.time() + settings.timeout if settings.timeout is not None else None

    with quiet_optuna():
        study, lock, goal = open_study(settings), AskLock(settings), target(settings)
        try:
            while (deadline is None or time.time() < deadline) and not should_stop():
                lock.acquire()
                try:
                    optuna.storages.fail_stale_trials(study)
                    trials = study.get_trials(deepcopy=False)
                    if counted(trials) < goal:  # the lock makes len(trials) the new number
                        study.sampler = make_sampler(settings.sampler, settings.space,
                                                     settings.seed, len(trials))
                        study.optimize(lambda t: run_trial(t, settings, data, backend, lock,
                                                           on_update),
                                       n_trials=1, catch=(Exception,))
                        on_update()
                        continue
                finally:
                    lock.release()
                if not any(t.state.name == "RUNNING" for t in trials):
                    return
                on_update()  # others' trials are running: one may be stale and come back
                time.sleep(min(1.0, settings.heartbeat / 2))
        except SQLAlchemyError as e:
            raise TrainerError(f"the sweep storage {safe_url(settings.url)} failed: "
                               f"{type(e).__name__}: {str(e).splitlines()[0]}") from None


def _worker_main(settings: SweepSettings, worker: int) -> None:
    """A worker process (spawned): errors become one line, Ctrl-C a quiet exit."""
    try:
        work(settings)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except TrainerError as e:
        print(f"error: worker {worker}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None


def run_sweep(settings: SweepSettings, data: Dataset | None = None,
              on_update: Callable[..., None] = lambda study, force=False: None,
              executor: Callable[[SweepSettings, Any, Callable[..., None]], None] | None = None
              ) -> dict[str, Any]:
    """Run (or resume) a sweep and write its outputs; returns the summary. `on_update(study)` is
    called after every epoch (one worker) or every second (worker processes), and
    `on_update(study, True)` at the end. `executor(settings, study, on_update)`: runs the
    workers elsewhere (sweep/cluster.py) instead of here."""
    if not 0 <= settings.seed < SAMPLER_SEEDS:
        raise UsageError(f"the sweep's seed must be from 0 to {SAMPLER_SEEDS - 1} (Optuna's "
                         f"samplers take 32-bit seeds), got {settings.seed}: choose another "
                         f"--seed")
    if settings.sampler not in SAMPLERS:
        raise UsageError(f"unknown --sampler {settings.sampler!r}; choose one of "
                         f"{', '.join(SAMPLERS)}")
    if not settings.config.validation_split:
        raise UsageError("a sweep scores trials on a validation split: set validation_split")
    if settings.sampler == "grid":
        settings.space.grid()  # says which parameter is not a grid
    settings.space.check(settings.config)  # before loading (or fetching) any data
    require_optuna()
    # on a cluster the workers load it (a GPU's backend need not load on the driver)
    backend = load_backend(settings.backend, settings.device) if executor is None else None
    data = data if data is not None else load_dataset(settings.data_dir, dataset=settings.dataset)
    settings.space.check(settings.config, lambda cfg: check_data(cfg, data, settings.limit_train))
    created = not settings.sweep_dir.exists()
    try:
        settings.sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create sweep directory {settings.sweep_dir}: {e.strerror or e}; "
                         f"choose another --sweep-dir") from None
    try:
        with quiet_optuna():
            study = start_study(settings)
    except BaseException:
        if created:  # a storage that cannot be opened leaves nothing behind
            shutil.rmtree(settings.sweep_dir, ignore_errors=True)
        raise
    started = time.time()
    try:
        if executor is not None:
            executor(settings, study, on_update)
        elif settings.workers == 1:
            work(settings, data, backend, lambda: on_update(study))
        else:
            _run_processes(settings, study, on_update)
    except BaseException:
        # Interrupted or failed: the trials so far still get their report, but nothing that
        # goes wrong while writing it may replace the exception (Ctrl-C must exit 130).
        with quiet_optuna():
            with contextlib.suppress(Exception):
                on_update(study, True)
            with contextlib.suppress(Exception):
                write_outputs(study, settings, time.time() - started)
        raise
    with quiet_optuna():
        on_update(study, True)
        summary = write_outputs(study, settings, time.time() - started)
    if target(settings) < settings.trials:
        summary["notes"].append(f"the grid has {target(settings)} points: the sweep ran those")
    if settings.sampler != "grid" and settings.space.baseline(settings.config) is None:
        summary["notes"].append("the config's own values lie outside the space: no baseline "
                                "trial")
    return summary


def _run_processes(settings: SweepSettings, study: Any, on_update: Callable[..., None]) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(settings, i), daemon=False)
             for i in range(settings.workers)]
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
            p.join(timeout=WORKER_GRACE_SECONDS)
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [i for i, p in enumerate(procs) if p.exitcode not in WORKER_STOPPED_CLEANLY]
    if failed:
        raise TrainerError(f"worker {failed[0]} stopped with exit code "
                           f"{procs[failed[0]].exitcode} (its message is above)")
