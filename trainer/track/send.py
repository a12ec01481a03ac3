"""Sending finished runs afterwards (`trainer runs log`): from their run directories, the same
params, metrics and artifacts as a live run; a run MLflow already has is not sent twice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import TrainerError, UsageError
from trainer.track import mlflow_run
from trainer.track.groups import BATCH_FILES, SWEEP_FILES, trial_record
from trainer.track.record import RunRecord, read_record
from trainer.track.tensorboard import write_tensorboard

Report = Callable[[str], None]


@dataclass
class Target:
    """A directory given to `runs log`: one run, or a group (batch or sweep) of runs."""

    path: Path
    kind: str  # run | batch | sweep
    runs: list[RunRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # runs that have not ended, and why


def resolve(path: Path) -> Target:
    """What `path` is; UsageError naming it if it is neither a run nor a group of runs."""
    if not path.is_dir():
        raise UsageError(f"{path}: no such directory")
    if (path / "config.json").is_file():
        return Target(path, "run", [read_record(path)])
    kind = "batch" if (path / "group.json").is_file() else \
        "sweep" if (path / "trials").is_dir() else None
    if kind is None:
        raise UsageError(f"{path} is neither a run directory (config.json) nor a batch's group "
                         f"(group.json) or a sweep's directory (trials/)")
    folder = path if kind == "batch" else path / "trials"
    target = Target(path, kind)
    members = [p for p in folder.iterdir() if (p / "config.json").is_file()]
    for member in sorted(members, key=lambda p: (len(p.name), p.name)):
        try:
            target.runs.append(trial_record(member, path) if kind == "sweep" else
                               read_record(member, path.name))
        except TrainerError as e:
            target.skipped.append(str(e))
    return target


def to_tensorboard(target: Target, report: Report) -> None:
    for record in target.runs:
        report(f"{record.path}: {write_tensorboard(record)} written")


def to_mlflow(target: Target, report: Report, server: mlflow_run.Server) -> None:
    """Every run of `target` into MLflow (a group: under its parent run); failures of the
    server raise TrainerError naming it."""
    try:
        parent = mlflow_run.start_parent(server, target.path, target.kind) \
            if target.kind != "run" else None
        for record in target.runs:
            run_id, sent = mlflow_run.sync(server, record, parent)
            report(f"{record.path}: " + (f"sent (MLflow run {run_id})" if sent else
                                         f"already in MLflow (run {run_id}), not sent again"))
        if parent is not None:
            files = BATCH_FILES if target.kind == "batch" else SWEEP_FILES
            mlflow_run.finish_parent(server, parent, target.path, files)
    except TrainerError:
        raise
    except Exception as e:  # the server's, the network's or the client's
        lines = str(e).strip().splitlines()
        raise TrainerError(f"MLflow at {server.uri} failed for {target.path}: "
                           f"{type(e).__name__}: {lines[0][:300] if lines else ''}") from None
