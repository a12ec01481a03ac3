"""A run directory as the trackers see it: params, per-epoch scalars, final figures, artifacts.

Both the live loggers and `trainer runs log` read it from here, so a run sent afterwards
carries the same params, metrics and artifacts as one logged while it trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.core.config import Config
from trainer.errors import UsageError
from trainer.fileio import read_json

# the per-epoch scalars, by the name both trackers log them under, from history.json's keys
EPOCH_SCALARS = {"loss": "loss", "accuracy/train": "train_accuracy",
                 "accuracy/validation": "val_accuracy", "accuracy/test": "test_accuracy",
                 "learning_rate": "learning_rate", "seconds": "seconds"}
SAMPLES_PER_SECOND = "samples_per_second"
# the final figures (metrics.json), logged once as final/<key>, and TensorBoard's hparams metrics
FINAL_KEYS = ("train_accuracy", "test_accuracy", "validation_accuracy", "best_epoch",
              "total_seconds")
RUN_ID = re.compile(r"[0-9a-f]{32}")
ARTIFACTS = ("config.json", "metrics.json", "history.svg", "confusion.svg", "model.safetensors")


def epoch_scalars(row: dict[str, Any], samples: int | None) -> dict[str, float]:
    """One history row's scalars (those it has), and samples a second where known."""
    out = {tag: float(row[key]) for tag, key in EPOCH_SCALARS.items()
           if isinstance(row.get(key), int | float) and math.isfinite(row[key])}
    seconds = row.get("seconds")
    if samples and isinstance(seconds, int | float) and seconds > 0:
        out[SAMPLES_PER_SECOND] = samples / seconds
    return out


def train_samples(config: Config, available: int, limit_train: int | None) -> int:
    """How many images an epoch trains on: the (limited) training set less the validation
    split, as the loop takes it."""
    n = min(limit_train or available, available)
    return n - config.validation_size(n)


def flatten(value: Any, prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested dicts and lists as dotted keys (layers.0.nodes); None left out."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {} if value is None else {prefix: value}
    out: dict[str, str | int | float | bool] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def path_key(path: Path) -> str:
    """A directory's identity as a tag value (its resolved path, hashed: filter-safe)."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]


@dataclass
class RunRecord:
    """What a finished (or diverged, or pruned) run directory says about itself."""

    path: Path
    name: str
    config: dict[str, Any]
    state: str  # finished | diverged | pruned | failed
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    group: str | None = None  # the batch's or sweep's directory name

    @property
    def run_id(self) -> str | None:
        """metrics.json's run id (uuid4 hex, as write_run makes it; anything else is not
        used: it goes into the tracking server's search filters)."""
        value = self.metrics.get("run_id")
        return value if isinstance(value, str) and RUN_ID.fullmatch(value) else None

    @property
    def samples(self) -> int | None:
        value = self.metrics.get("train_samples")
        return value if isinstance(value, int) and value > 0 else None

    def params(self) -> dict[str, str | int | float | bool]:
        """The flattened config, and where and on what it ran."""
        m = self.metrics
        data = m.get("data") if isinstance(m.get("data"), dict) else {}
        extra = {"backend": m.get("backend"), "device": m.get("device"),
                 "dataset": data.get("dataset"), "dataset_sha256": data.get("sha256"),
                 "train_samples": m.get("train_samples"), "versions": m.get("versions")}
        return flatten(self.config) | flatten(extra)

    def final(self) -> dict[str, float]:
        return {f"final/{k}": float(self.metrics[k]) for k in FINAL_KEYS
                if isinstance(self.metrics.get(k), int | float)
                and not isinstance(self.metrics.get(k), bool) and math.isfinite(self.metrics[k])}

    def artifacts(self) -> list[Path]:
        return [self.path / name for name in ARTIFACTS if (self.path / name).is_file()]


def read_record(path: Path, group: str | None = None) -> RunRecord:
    """A run directory that has ended; UsageError naming it if it is running, was interrupted
    (resume it first) or is not a run directory."""
    config = read_json(path / "config.json", "run config") if (path / "config.json").is_file() \
        else None
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a run directory (no config.json)")
    metrics = read_json(path / "metrics.json", "run metrics") \
        if (path / "metrics.json").is_file() else None
    if not isinstance(metrics, dict):
        raise UsageError(f"{path} has not finished (no metrics.json): resume or finish it "
                         f"first, then log it")
    if metrics.get("diverged"):
        state = "diverged"
    elif metrics.get("state") in ("PRUNED", "FAIL"):
        state = "pruned" if metrics["state"] == "PRUNED" else "failed"
    else:
        state = "finished"
    history = read_json(path / "history.json", "run history") \
        if (path / "history.json").is_file() else metrics.get("epochs", [])
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise UsageError(f"{path}: its history is not a list of epochs")
    return RunRecord(path, path.name, config, state, history, metrics, group)
