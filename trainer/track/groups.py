"""A batch and a sweep as the trackers see them: a parent MLflow run with a child per run or
trial, and a directory that is a `tensorboard --logdir` of its runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.core.config import Config
from trainer.errors import TrainerError
from trainer.track.live import GroupLog, RunLog, Tracking, read_config
from trainer.track.record import RunRecord, read_record

BATCH_FILES = ("group.json", "summary.json", "summary.csv", "history.svg")
SWEEP_FILES = ("summary.json", "leaderboard.csv", "best.json", "history.svg", "importances.svg")
ENDED = ("COMPLETE", "PRUNED", "FAIL")


class BatchLog:
    """Fed with a batch's events (train_batch's `on_group` and `on_event`), wherever its runs
    train: the driver receives every epoch, so worker processes log nothing themselves."""

    def __init__(self, tracking: Tracking, samples: Callable[[Config], int | None]) -> None:
        self.tracking, self.samples = tracking, samples
        self.group: GroupLog | None = None
        self.runs: dict[str, RunLog] = {}

    def on_group(self, path: Path, resumed: bool = False) -> None:
        self.group = GroupLog(self.tracking, path, "batch")

    def on_event(self, event: dict[str, Any]) -> None:
        if self.group is not None:
            with self.tracking.guard(f"{event['run']}'s {event['event']}"):
                self._on_event(self.group, event)

    def _on_event(self, group: GroupLog, event: dict[str, Any]) -> None:
        kind, name = event["event"], event["run"]
        path = group.path / name
        if kind == "start" and (path / "config.json").is_file():
            cfg = read_config(path)
            self.runs[name] = self.tracking.run(path, name, cfg, self.samples(cfg),
                                                group.parent, group.path.name)
        elif kind == "epoch" and name in self.runs:
            self.runs[name].on_epoch(event["stats"])
        elif kind == "done" and name in self.runs:
            self.runs.pop(name).finish()
        elif kind in ("kept", "done"):  # done: trained elsewhere (a cluster's worker), and
            # arrived whole just now: logged from its run directory, as `trainer runs log` does
            group.log_finished(read_record(path, group.path.name))

    def finish(self) -> None:
        """After the batch (whole or stopped): close the runs still open, send the summary."""
        for run in self.runs.values():
            run.finish()
        self.runs.clear()
        if self.group is not None and (self.group.path / "summary.json").is_file():
            self.group.finish(BATCH_FILES)


class SweepLog:
    """Fed with the sweep's study (run_sweep's `on_update`): each trial is logged from its
    run directory once it has ended (completed, pruned or failed), whichever worker ran it."""

    def __init__(self, tracking: Tracking, sweep_dir: Path) -> None:
        self.tracking, self.path = tracking, sweep_dir
        self.group = GroupLog(tracking, sweep_dir, "sweep")
        self.logged: set[int] = set()

    def on_update(self, study: Any, force: bool = False) -> None:
        with self.tracking.guard("the sweep's trials"):
            self._log_ended(study.get_trials(deepcopy=False))

    def _log_ended(self, trials: list[Any]) -> None:
        for trial in trials:
            if trial.number in self.logged or trial.state.name not in ENDED:
                continue
            try:
                record = trial_record(self.path / "trials" / str(trial.number), self.path)
            except TrainerError:  # failed before its directory had a metrics.json
                continue
            self.logged.add(trial.number)
            self.group.log_finished(record)

    def finish(self) -> None:
        self.group.finish(SWEEP_FILES)


def trial_record(path: Path, sweep_dir: Path) -> RunRecord:
    """A sweep's trial (trials/<n>/), named as the sweep's table names it."""
    record = read_record(path, sweep_dir.name)
    record.name = f"trial {path.name}"
    return record
