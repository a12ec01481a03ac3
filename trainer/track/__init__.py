"""TensorBoard and MLflow, fed by the runs' callbacks, off the hot loop: the run directory
stays the source of truth, logging adds to it and never replaces it.

    from trainer.track import Tracking, log_targets
    tracking = Tracking(log_targets(["tensorboard", "mlflow"]), warn=print)
    run = tracking.run(path, "my-run", config, samples)   # run.on_epoch as Callbacks.on_epoch
    ...; run.finish(); notes = tracking.close()
"""

from __future__ import annotations

import importlib.util

from trainer.errors import UsageError, install_hint
from trainer.track.groups import BatchLog, SweepLog
from trainer.track.live import RunLog, Tracking
from trainer.track.record import RunRecord, read_record, train_samples

TARGETS = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow")}

__all__ = ["TARGETS", "BatchLog", "RunLog", "RunRecord", "SweepLog", "Tracking",
           "log_targets", "read_record", "train_samples"]


def log_targets(values: list[str] | None, env: str | None = None) -> tuple[str, ...]:
    """`--log` values (repeatable, or comma-separated), else TRAINER_LOG's (`env`), checked:
    UsageError naming the pip command for one whose library is not installed."""
    given = values if values else [env] if env else []
    names = [n.strip().lower() for v in given for n in v.split(",") if n.strip()]
    out: list[str] = []
    for name in names:
        if name not in TARGETS:
            raise UsageError(f"--log {name!r}: unknown; choose tensorboard or mlflow")
        module, extra = TARGETS[name]
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--log {name} needs {module}, which is not installed: "
                             f"{install_hint(extra)}")
        if name not in out:
            out.append(name)
    return tuple(out)
