"""Reading run directories back: what a run is, how far it got, and whether it still runs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from trainer.core.config import Config
from trainer.errors import TrainerError, UsageError
from trainer.fileio import read_json
from trainer.run.checkpoint import LATEST, PREVIOUS
from trainer.run.model_io import FORMAT
from trainer.run.rundir import CLAIM, is_held

STATES = ("finished", "interrupted", "diverged", "running", "damaged")
STAMP = re.compile(r"\d{8}-\d{6}-")  # the timestamp that starts a default run directory's name
RUN_FILES = ("metrics.json", "model.safetensors", LATEST, PREVIOUS, CLAIM)


@dataclass
class RunInfo:
    """One run directory as `trainer runs` shows it; `state` is one of STATES."""

    path: Path
    name: str
    started: float  # when its config was written (seconds since the epoch)
    config: dict[str, Any]
    state: str
    network: str = "?"
    backend: str | None = None
    epochs_done: int = 0
    test_accuracy: float | None = None
    seconds: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    problem: str = ""  # why the state is "damaged"

    @property
    def epochs(self) -> int | None:
        value = self.config.get("epochs")
        return value if isinstance(value, int) else None

    def row(self) -> dict[str, Any]:
        """The figures `trainer runs --json` prints."""
        return {"id": run_id(self.path), "path": str(self.path), "name": self.name,
                "started": self.started,
                "network": self.network, "backend": self.backend, "epochs": self.epochs,
                "epochs_done": self.epochs_done, "test_accuracy": self.test_accuracy,
                "seconds": self.seconds, "state": self.state, "seed": self.config.get("seed")}


def is_run_dir(path: Path) -> bool:
    """A run directory holds its config and at least one file only a run writes (a run killed
    before its first checkpoint has just the two: config.json and its claim)."""
    return (path / "config.json").is_file() and any((path / f).exists() for f in RUN_FILES)


def read_run(path: str | Path) -> RunInfo:
    """The run in `path` (UsageError if it is not a run directory). Damaged files do not
    raise: the run's state is then "damaged" and `problem` says why."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path} is not a run directory: "
                         f"{'it does not exist' if not path.exists() else 'it is a file'}")
    if not is_run_dir(path):
        raise UsageError(f"{path} is not a run directory (no config.json and metrics.json or "
                         f"checkpoint written by `trainer train`)")
    started = (path / "config.json").stat().st_mtime
    name = STAMP.sub("", path.name, count=1) if STAMP.match(path.name) else path.name
    try:
        config = read_json(path / "config.json", "run config")
        if not isinstance(config, dict):
            raise UsageError(f"{path / 'config.json'}: not a JSON object")
        info = RunInfo(path, name, started, config, "interrupted",
                       network=network_name(config))
        _fill(info)
    except TrainerError as e:
        return RunInfo(path, name, started, {}, "damaged", problem=str(e))
    return info


def _fill(info: RunInfo) -> None:
    """State and figures from metrics.json (a finished or diverged run) or the checkpoint."""
    path = info.path
    if (path / "metrics.json").is_file():
        metrics = read_json(path / "metrics.json", "metrics file")
        if not isinstance(metrics, dict):
            raise UsageError(f"{path / 'metrics.json'}: not a JSON object")
        info.metrics, info.backend = metrics, _text(metrics.get("backend"))
        if metrics.get("diverged"):
            info.state, info.epochs_done = "diverged", _int(metrics.get("epoch"))
            return
        if (path / "model.safetensors").is_file():
            problem = model_problem(path / "model.safetensors")
            if problem is not None:
                raise UsageError(problem)
            info.state = "finished"
            info.history = [r for r in metrics.get("epochs") or [] if isinstance(r, dict)]
            info.epochs_done = len(info.history)
            info.test_accuracy = _float(metrics.get("test_accuracy"))
            info.seconds = _float(metrics.get("total_seconds"))
            return
    if is_held(path):
        info.state = "running"
    for name in (LATEST, PREVIOUS):
        state = checkpoint_state(path / name)
        if state is not None:
            info.history = [r for r in state.get("history") or [] if isinstance(r, dict)]
            info.epochs_done = len(info.history)
            info.seconds = _float(state.get("elapsed"))
            run = state.get("run") if isinstance(state.get("run"), dict) else {}
            info.backend = info.backend or _text(run.get("backend"))
            return


def model_problem(path: Path) -> str | None:
    """Why a run's model file is not a model trainer saved (its header read, its tensors not:
    load_model checks those), or None."""
    try:
        with safe_open(str(path), framework="numpy") as f:  # reads the header only
            meta = f.metadata() or {}
    except (OSError, SafetensorError, ValueError) as e:
        return f"{path} cannot be read as a model ({type(e).__name__})"
    if meta.get("format") != FORMAT or "sha256" not in meta:
        return f"{path} is not a model saved by trainer (no {FORMAT} header)"
    return None


def checkpoint_state(path: Path) -> dict[str, Any] | None:
    """The loop state recorded in a checkpoint's header, without reading (or checking) its
    tensors: enough for a table. None if there is no such file or it cannot be read."""
    try:
        with safe_open(str(path), framework="numpy") as f:  # reads the header only
            state = json.loads((f.metadata() or {})["state"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return state if isinstance(state, dict) else None


def network_name(config: dict[str, Any]) -> str:
    """The layer sizes, `784-128-10`, or "?" for a config that is not valid."""
    try:
        return "-".join(str(n) for n in Config.from_dict(config).sizes)
    except TrainerError:
        return "?"


def find_runs(root: Path) -> list[RunInfo]:
    """The run directories directly under `root`, in name order."""
    if not root.is_dir():
        return []
    return [read_run(p) for p in sorted(root.iterdir()) if p.is_dir() and is_run_dir(p)]


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _text(value: Any) -> str | None:
    return value[:40] if isinstance(value, str) else None


def run_id(path: str | Path) -> str:
    """A run's short id, as `trainer runs` shows it: 6 hex digits of a hash of its absolute
    path (the same in every command run from anywhere; moving the run changes it)."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:ID_DIGITS]


ID_DIGITS = 6
LATEST_RUN = "latest"


def all_runs(root: str | Path = "runs") -> list[Path]:
    """Every run directory under `root` and in its groups (one folder deeper)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and is_run_dir(p):
            found.append(p)
        elif p.is_dir():
            found += [q for q in sorted(p.iterdir()) if q.is_dir() and is_run_dir(q)]
    return found


def resolve_run(ref: str | Path, root: str | Path = "runs") -> Path:
    """The run a command was given: a directory (returned as it is: the command's own checks
    say what is wrong with it), `latest` (the run under `root` whose config was written
    last) or a run's id from `trainer runs` (its first 3 to 6 digits will do)."""
    text = str(ref)
    path = Path(text)
    if path.exists() or "/" in text or os.sep in text:
        return path
    runs = all_runs(root)
    if text == LATEST_RUN:
        if not runs:
            raise UsageError(f"no runs under {root}/ yet, so `{LATEST_RUN}` names none: train "
                             f"one with `trainer train`")
        return max(runs, key=lambda p: ((p / "config.json").stat().st_mtime, str(p)))
    if re.fullmatch(rf"[0-9a-fA-F]{{3,{ID_DIGITS}}}", text):
        matches = [p for p in runs if run_id(p).startswith(text.lower())]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise UsageError(f"{text} is the start of the ids of {len(matches)} runs ("
                             + ", ".join(str(p) for p in matches[:5]) + "): give more digits")
    raise UsageError(f"{text} is not a run directory, nor a run's id under {root}/ (see "
                     f"`trainer runs`), nor `{LATEST_RUN}`")
