"""Logging runs as they train: a Tracking session (the targets, one outbox to the MLflow
server), a RunLog per training run fed by its on_epoch callback, and the group logs of a
batch (fed by its events) and of a sweep (fed by its study). The run directory stays the
source of truth: at each run's end the trackers are completed from it."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainer.core.config import Config
from trainer.errors import TrainerError
from trainer.fileio import read_json
from trainer.track import mlflow_run
from trainer.track.outbox import CLOSE_SECONDS, Outbox
from trainer.track.record import RunRecord, read_record
from trainer.track.tensorboard import FOLDER, TensorBoardRun, write_tensorboard

Warn = Callable[[str], None]


class Tracking:
    """Where this command's runs are logged. `close()` waits (briefly) for the MLflow jobs and
    returns the notes to show: what could not be logged, and the command that sends it."""

    def __init__(self, targets: tuple[str, ...], warn: Warn,
                 server: mlflow_run.Server | None = None) -> None:
        self.targets, self.warn = targets, warn
        self.mlflow = "mlflow" in targets
        self.tensorboard = "tensorboard" in targets
        self.server = server or mlflow_run.Server()
        if self.mlflow:
            mlflow_run.preload()
        self.outbox = Outbox("MLflow", warn) if self.mlflow else None
        self.where: dict[str, Path] = {}  # each job's run or group directory, by its name

    def run(self, path: Path, name: str, config: Config, samples: int | None,
            parent: Callable[[], str | None] = lambda: None,
            group: str | None = None) -> RunLog:
        return RunLog(self, path, name, config, samples, parent, group)

    def send(self, what: str, path: Path, job: Callable[[], None]) -> None:
        """An MLflow job (named `what`) for the run or group in `path`."""
        assert self.outbox is not None
        self.where[what] = path
        self.outbox.put(what, job)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Logging that fails here (reading a run back, writing its event file) is a warning:
        the batch or the sweep it logs goes on."""
        try:
            yield
        except Exception as e:
            self.warn(f"could not log {what} ({type(e).__name__}: {e}); training goes on")

    def close(self, timeout: float = CLOSE_SECONDS) -> list[str]:
        if self.outbox is None:
            return []
        failed = self.outbox.close(timeout)
        if not failed:
            return []
        unsent = {self.where[w.split(" (still waiting")[0]]: None for w in failed}
        # a group's command sends its runs too
        where = " ".join(_quote(p) for p in unsent if p.parent not in unsent)
        return [f"MLflow ({self.server.uri}) did not get: " + "; ".join(failed[:5])
                + (f"; and {len(failed) - 5} more" if len(failed) > 5 else ""),
                f"The run directories have it all; send it when the server is back:\n"
                f"  trainer runs log {where} --to mlflow"]


class RunLog:
    """One training run's loggers: `on_epoch` after each epoch (TensorBoard writes at once,
    MLflow queues one batched call), `finish` once the run directory is written."""

    def __init__(self, tracking: Tracking, path: Path, name: str, config: Config,
                 samples: int | None, parent: Callable[[], str | None],
                 group: str | None) -> None:
        self.tracking, self.path, self.name, self.samples = tracking, path, name, samples
        self.config, self.parent, self.group = config.to_dict(), parent, group
        self.run_id: str | None = None
        self.tb: TensorBoardRun | None = None
        if tracking.tensorboard:
            try:
                self.tb = TensorBoardRun(path / FOLDER, samples)
            except Exception as e:
                self._lost_tensorboard(e)

    def on_epoch(self, stats: Any) -> None:
        row = stats if isinstance(stats, dict) else dataclasses.asdict(stats)
        if self.tb is not None:
            self._tensorboard(lambda tb: tb.epoch(row))
        if self.tracking.mlflow:
            self.tracking.send(f"{self.name}: epoch {row['epoch']}", self.path,
                               lambda: self._log_epoch(row))

    def _started(self) -> str:
        if self.run_id is None:
            self.run_id = mlflow_run.start_run(self.tracking.server, self.path, self.name,
                                               self.config, self.parent(), self.group)
        return self.run_id

    def _log_epoch(self, row: dict[str, Any]) -> None:
        mlflow_run.log_epoch(self.tracking.server, self._started(), row, self.samples)

    def finish(self) -> None:
        """Complete the trackers from the run directory, if the run has ended (an interrupted
        run keeps its MLflow run open: resuming it continues there)."""
        try:
            record = read_record(self.path, self.group)
        except TrainerError:
            record = None
        if self.tb is not None:
            self._tensorboard(lambda tb: tb.finish(record) if record else tb.close())
        if self.tracking.mlflow and record is not None:
            self.tracking.send(f"{self.name}: its params, final metrics and artifacts",
                               self.path, lambda: self._sync(record))

    def _tensorboard(self, write: Callable[[TensorBoardRun], None]) -> None:
        """A failed write (a full disk) is one warning, and the end of TensorBoard for this
        run: never of its training."""
        try:
            write(self.tb)
        except Exception as e:
            self._lost_tensorboard(e)

    def _lost_tensorboard(self, error: Exception) -> None:
        self.tb = None
        self.tracking.warn(f"TensorBoard: could not write {self.path / FOLDER} "
                           f"({type(error).__name__}: {error}); training goes on without it; "
                           f"afterwards: trainer runs log {_quote(self.path)} --to tensorboard")

    def _sync(self, record: RunRecord) -> None:
        mlflow_run.sync(self.tracking.server, record, self.parent(), self._started())


class GroupLog:
    """A batch's or a sweep's parent MLflow run, created first (its children name it)."""

    def __init__(self, tracking: Tracking, path: Path, kind: str) -> None:
        self.tracking, self.path, self.kind = tracking, path, kind
        self.run_id: str | None = None
        if tracking.mlflow:
            tracking.send(f"the {kind}'s parent run", path, self._start)

    def _start(self) -> None:
        self.run_id = mlflow_run.start_parent(self.tracking.server, self.path, self.kind)

    def parent(self) -> str | None:
        if self.run_id is None and self.tracking.mlflow:
            self._start()  # it failed before: try again, now that a child needs it
        return self.run_id

    def log_finished(self, record: RunRecord) -> None:
        """A run that ended before (a batch's kept run, a sweep's trial), from its directory."""
        if self.tracking.tensorboard and not (record.path / FOLDER).is_dir():
            with self.tracking.guard(f"{record.path} to TensorBoard"):
                write_tensorboard(record)
        if self.tracking.mlflow:
            self.tracking.send(f"{record.name}", record.path,
                               lambda: mlflow_run.sync(self.tracking.server, record,
                                                       self.parent()))

    def finish(self, files: tuple[str, ...]) -> None:
        if self.tracking.mlflow:
            self.tracking.send(f"the {self.kind}'s summary", self.path,
                               lambda: mlflow_run.finish_parent(
                                   self.tracking.server, self.parent() or "", self.path,
                                   files))


def read_config(path: Path) -> Config:
    return Config.from_dict(read_json(path / "config.json", "run config"),
                            source=str(path / "config.json"))


def _quote(path: Path) -> str:
    text = str(path)
    return text if all(c.isalnum() or c in "/._+-" for c in text) else "'" + \
        text.replace("'", "'\\''") + "'"
