"""A sweep's Optuna study: its database, samplers, heartbeats, and who may start a trial."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.errors import TrainerError, UsageError, install_hint
from trainer.sweep.report import retried_numbers
from trainer.sweep.space import Space

if TYPE_CHECKING:
    from trainer.sweep.settings import SweepSettings

SAMPLERS = ("tpe", "random", "grid", "perturb")
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
SQLITE_TIMEOUT = 60  # seconds a process waits for another's write on the SQLite file


def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as e:
        raise UsageError(f"sweeps need Optuna and SQLAlchemy ({e}): "
                         f"{install_hint('sweep')}") from None


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


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return "(unparsable URL)"


def open_study(settings: SweepSettings) -> Any:
    """The study (created if new) with heartbeats, the retry of stale trials and the sampler."""
    import optuna
    from optuna.storages import RDBStorage

    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9
    kw = ({"heartbeat_stale_trial_callback": retry(max_retry=settings.max_retry)} if retry else
          {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(settings.max_retry)})
    sqlite = settings.url.startswith("sqlite")
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if sqlite else {}
    for attempt in range(3):  # two machines creating the same new study race on its tables
        try:
            storage = RDBStorage(settings.url, engine_kwargs=engine,
                                 heartbeat_interval=settings.heartbeat,
                                 grace_period=3 * settings.heartbeat, **kw)
            return optuna.create_study(
                storage=storage, study_name=settings.study, direction="maximize",
                load_if_exists=True,
                sampler=make_sampler(settings.sampler, settings.space, settings.seed),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
        except Exception as e:  # SQLAlchemy's errors: a bad URL, no server, no driver
            if attempt == 2 or isinstance(e, TrainerError | ImportError | ValueError):
                raise UsageError(f"cannot open the sweep storage {safe_url(settings.url)}: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def make_sampler(name: str, space: Space, seed: int, number: int | None = None) -> Any:
    """The sampler; with `number` (the next trial's) it draws from its own seed sequence, so that
    workers started together, or a resumed sweep, never draw the same points twice."""
    import optuna

    if name == "grid":  # its grid ids index a list shuffled by the seed: one seed for all
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if number is not None:
        seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])

    if name == "tpe":  # constant_liar: parallel workers do not all pick the same promising point
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return perturb_sampler(space, seed)


def perturb_sampler(space: Space, seed: int | None = None) -> Any:
    """An Optuna sampler for neural-net-rs's wish: the best trial so far, each value moved
    "plus or minus a small random amount" (see Param.perturb); random until a trial completes."""
    from optuna.samplers import BaseSampler, RandomSampler
    from optuna.trial import TrialState

    class PerturbSampler(BaseSampler):
        def __init__(self) -> None:
            self._rng = np.random.default_rng(seed)
            self._random = RandomSampler(seed=seed)

        def reseed_rng(self) -> None:
            self._rng = np.random.default_rng()
            self._random.reseed_rng()

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return space.distributions()

        def sample_relative(self, study: Any, trial: Any,
                            search_space: dict[str, Any]) -> dict[str, Any]:
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not done:
                return {}  # sample_independent draws at random
            best = max(done, key=lambda t: t.value)
            by_path = {p.path: p for p in space.params}
            return {name: by_path[name].perturb(best.params[name], self._rng)
                    for name in search_space if name in by_path and name in best.params}

        def sample_independent(self, study: Any, trial: Any, param_name: str,
                               param_distribution: Any) -> Any:
            return self._random.sample_independent(study, trial, param_name, param_distribution)

    return PerturbSampler()


class AskLock:
    """Held from counting the study's trials to creating the next one, so that workers on one
    machine (a file lock) or on many (a PostgreSQL advisory lock) never start trial N+1."""

    def __init__(self, settings: SweepSettings) -> None:
        sqlite = settings.url.startswith("sqlite:///") and ":memory:" not in settings.url
        self.path = (Path(settings.url.removeprefix("sqlite:///").split("?")[0] + ".lock")
                     if sqlite else settings.sweep_dir / ".ask.lock")
        self.key = zlib.crc32(settings.study.encode())  # one lock per study
        self.conn, self.fd = None, None
        if settings.url.startswith("postgresql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(settings.url, poolclass=sqlalchemy.pool.NullPool)
            self.conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def acquire(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        if self.conn is not None:
            self.conn.exec_driver_sql(f"SELECT pg_advisory_lock({self.key})")

    def release(self) -> None:
        """Idempotent: the objective releases it once its trial exists, the loop again after."""
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


def target(settings: SweepSettings) -> int:
    """How many trials to run: --trials, or fewer if the grid has fewer points."""
    if settings.sampler == "grid":
        return min(settings.trials, int(np.prod([len(v) for v in settings.space.grid().values()])))
    return settings.trials


def start_study(settings: SweepSettings) -> Any:
    """Create or resume the study; a new one first runs the config as given (the baseline)."""
    study = open_study(settings)
    recorded = {"config": settings.config.to_dict(), "space": settings.space.to_json(),
                "limit_train": settings.limit_train}
    lock = AskLock(settings)
    lock.acquire()
    try:
        if not study.get_trials(deepcopy=False):
            old = settings.sweep_dir / "trials"
            if old.is_dir() and any(old.iterdir()):
                raise UsageError(f"{settings.sweep_dir} holds the trials of another sweep, but "
                                 f"study {settings.study!r} is new: choose another --sweep-dir "
                                 f"or --study")
            study.set_user_attr("sweep", recorded)
            baseline = settings.space.baseline(settings.config)
            if baseline is not None and settings.sampler != "grid":
                study.enqueue_trial(baseline, user_attrs={"baseline": True})
    finally:
        lock.release()
    before = study.user_attrs.get("sweep")
    if before is not None and before != recorded:
        what = [k for k in recorded if before.get(k) != recorded[k]]
        raise UsageError(f"study {settings.study!r} in {safe_url(settings.url)} was run with a "
                         f"different "
                         f"{' and '.join(what)}; resume it with the same config, space and "
                         f"options, or start a new one with --study")
    return study
