"""Run directories: names checked, claimed exclusively, filled with atomic writes."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import platform
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trainer.core.config import Config
from trainer.data.dataset import Dataset
from trainer.errors import UsageError
from trainer.fileio import atomic_write_json, atomic_write_text
from trainer.run.checkpoint import PREVIOUS
from trainer.run.model_io import SavedModel, save_model
from trainer.run.plots import confusion_svg, history_svg, write_svg
from trainer.run.results import DivergedError, EpochStats, TrainResult

try:
    import fcntl
except ImportError:  # Windows: no flock; a run in progress then shows as interrupted
    fcntl = None  # type: ignore[assignment]

CLAIM = ".trainer-run"  # created exclusively in a --run-dir: the run that made it owns the folder
LOCK_ATTEMPTS = 20  # tries, 50 ms apart, to take a run's lock
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_run_name(name: str, what: str = "run name", hint: str = "") -> str:
    """A run (or study) name is one plain path component: letters, digits, . _ + -, starting
    with a letter or digit, never `..`; `hint` ends the message (how to choose another)."""
    if not NAME.fullmatch(name) or ".." in name:
        raise UsageError(f"{what} {name!r} is not allowed: use letters, digits, '.', '_', "
                         f"'+' and '-' (starting with a letter or digit, no path separators, "
                         f"no '..'), at most 100 characters{hint}")
    return name


def claim_run_dir(run_dir: str | Path | None, name: str, root: str | Path = "runs") -> Path:
    """Create the run directory; never reuse one that holds files (no clobbered runs)."""
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise UsageError(f"run directory {path} is a file, not a directory; choose another "
                             f"--run-dir")
        try:
            path.mkdir(parents=True, exist_ok=True)
            if any(p.name != CLAIM for p in path.iterdir()):
                raise UsageError(f"run directory {path} already exists and is not empty; "
                                 f"choose another --run-dir")
            # the claim: of two runs started together on one new or empty folder, only the
            # one that creates this file first goes on
            os.close(os.open(path / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise UsageError(f"run directory {path} was just claimed by another run; choose "
                             f"another --run-dir") from None
        except OSError as e:
            raise UsageError(f"cannot create run directory {path}: {e.strerror or e}") from None
        return path
    check_run_name(name)
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            path = root / (f"{stamp}-{name}" if n == 1 else f"{stamp}-{name}-{n}")
            try:
                path.mkdir()  # exclusive: two runs started together never share a directory
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise UsageError(f"cannot create a run directory under {root}: {e.strerror or e}") from None
    raise UsageError(f"too many runs named {stamp}-{name} under {root}")


@contextlib.contextmanager
def hold_run(path: Path) -> Iterator[None]:
    """Hold the run's lock (an flock on its claim file, written with our pid) while training:
    `trainer runs` sees the run as running, and a second process that would train it too is
    refused. The kernel drops the lock when the process ends, however it ends."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(path / CLAIM, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as e:
        raise UsageError(f"cannot open {path / CLAIM}: {e.strerror or e}") from None
    try:
        for attempt in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # is_held's probe holds it for an instant: try again
                if attempt == LOCK_ATTEMPTS - 1:
                    owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                    raise UsageError(f"{path} is being trained by another process (pid "
                                     f"{owner}); wait for it, or stop it first") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def is_held(path: Path) -> bool:
    """Whether a process holds the run's lock now (is training it)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path / CLAIM, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def run_record(config: Config, name: str, limit_train: int | None, limit_test: int | None,
               data: Dataset, fingerprint: str, backend: str) -> dict[str, Any]:
    """What a run's checkpoints record of it (LoopState.run), for `--resume` and `trainer runs`:
    its config, name, limits, the data (name and SHA-256) and the backend."""
    return {"config": config.to_dict(), "name": name, "limit_train": limit_train,
            "limit_test": limit_test, "data": fingerprint, "backend": backend,
            "dataset": data.name}


def diverged_metrics(e: DivergedError, backend: str, config: Config) -> dict[str, Any]:
    """What metrics.json says of a run whose loss diverged."""
    return {"diverged": True, "message": str(e), "epoch": e.epoch, "step": e.step,
            "backend": backend, "dtype": config.dtype, "seed": config.seed}


def library_versions(backend: str, backend_version: str) -> dict[str, str]:
    import array_api_compat

    return {"python": platform.python_version(), "numpy": np.__version__,
            "array_api_compat": array_api_compat.__version__, backend: backend_version}


def history_rows(result: TrainResult) -> list[dict[str, Any]]:
    return [dataclasses.asdict(h) for h in result.history]


def run_metrics(result: TrainResult, class_names: list[str], backend_version: str,
                data: Dataset, fingerprint: str | None = None) -> dict[str, Any]:
    """Everything metrics.json records: final figures, the report, where and how it ran.
    Without a test set (a sweep's trials) the test report's keys are None (JSON null)."""
    cfg, rows = result.config, history_rows(result)
    best = result.best()
    tested = result.test_report is not None
    report = result.test_report.to_dict(class_names) if tested else {}
    return {
        "train_accuracy": result.train_accuracy,
        "test_accuracy": result.test_accuracy if tested else None,  # not NaN: JSON has no NaN
        "best_epoch": best.epoch if best else None,
        "stopped_early": result.stopped_early,
        "validation_samples": result.validation_samples,
        "total_seconds": result.total_seconds,
        "backend": result.backend,
        "device": result.device,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "train_samples": result.train_samples,
        "test_samples": len(result.test_predictions) if result.test_predictions is not None else 0,
        "epochs": rows,
        "confusion_matrix": report.get("confusion_matrix"),
        "per_class": report.get("per_class"),
        "macro_avg": report.get("macro_avg"),
        "weighted_avg": report.get("weighted_avg"),
        "versions": library_versions(result.backend, backend_version),
        # the data's SHA-256 (Dataset.fingerprint), where the caller has it: a sweep's trials
        # never read the test set, not even to hash it
        "data": {"dataset": data.name, "source": data.source, "path": str(data.path),
                 "sha256": fingerprint},
        "host": platform.node(),
    }


def write_run(path: Path, result: TrainResult, class_names: list[str], metrics: dict[str, Any],
              title: str = "", keep_checkpoints: bool = False) -> None:
    """Write the model, the history (JSON, CSV, SVG), the confusion heatmap and the metrics
    (`run_metrics`' dict, extended or not: its `epochs` are the history written). Then the
    run is whole: its previous checkpoint goes, unless `keep_checkpoints` (the latest stays:
    `--resume` reads it to say the run is finished)."""
    # the same id in the model and in metrics.json: a model copied in from another run is found
    run_id = metrics.setdefault("run_id", uuid.uuid4().hex)
    save_model(path / "model.safetensors",
               SavedModel(result.config, result.params, result.scaling, class_names, run_id,
                          metrics.get("data", {}).get("sha256") or "",
                          metrics.get("data", {}).get("dataset") or ""))
    rows = metrics["epochs"]
    atomic_write_json(path / "history.json", rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in dataclasses.fields(EpochStats)])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path / "history.csv", buf.getvalue())
    write_svg(path / "history.svg", history_svg(rows, title=title))
    if result.test_report is not None:
        write_svg(path / "confusion.svg",
                  confusion_svg(result.test_report.confusion, class_names, title=title))
    atomic_write_json(path / "metrics.json", metrics)
    if not keep_checkpoints:
        (path / PREVIOUS).unlink(missing_ok=True)
