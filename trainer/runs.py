"""Run directories: claimed exclusively, filled with atomic writes."""

from __future__ import annotations

import csv
import io
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import UsageError
from trainer.fileio import atomic_write_json, atomic_write_text
from trainer.model_io import SavedModel, save_model
from trainer.train import TrainResult


def claim_run_dir(run_dir: str | Path | None, name: str, root: str | Path = "runs") -> Path:
    """Create the run directory; never reuse one that holds files (no clobbered runs)."""
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"run directory {path} already exists and is not empty; "
                             f"choose another --run-dir")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create run directory {path}: {e.strerror or e}") from None
        return path
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


def library_versions(backend_version: str, backend: str) -> dict[str, str]:
    import array_api_compat

    return {"python": platform.python_version(), "numpy": np.__version__,
            "array_api_compat": array_api_compat.__version__, backend: backend_version}


def history_rows(result: TrainResult) -> list[dict[str, Any]]:
    return [{"epoch": h.epoch, "loss": h.loss, "train_accuracy": h.train_accuracy,
             "seconds": h.seconds} for h in result.history]


def write_run(path: Path, result: TrainResult, class_names: list[str],
              extra: dict[str, Any] | None = None) -> None:
    """Write the trained model, the resolved config, the history and the final metrics."""
    cfg = result.config
    save_model(path / "model.safetensors",
               SavedModel(cfg, result.params, result.scaling, class_names))
    rows = history_rows(result)
    atomic_write_json(path / "history.json", rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["epoch", "loss", "train_accuracy", "seconds"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path / "history.csv", buf.getvalue())
    metrics = {
        "train_accuracy": result.train_accuracy,
        "test_accuracy": result.test_accuracy,
        "total_seconds": result.total_seconds,
        "backend": result.backend,
        "device": result.device,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "epochs": rows,
        "host": platform.node() or os.uname().nodename,
    } | (extra or {})
    atomic_write_json(path / "metrics.json", metrics)
