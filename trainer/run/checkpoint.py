"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one safetensors file (tensors: weights, optimizer state, the current epoch's
batch order and shifts, the best weights so far; metadata: epoch, step, RNG states, history)
with a SHA-256 over all of it recorded inside and checked on load. It is written to a temp
file, fsynced, and only then renamed into place, the previous checkpoint kept beside it, so a
crash at any moment leaves at least one whole checkpoint. Loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save

from trainer.errors import DataError, TrainerError
from trainer.fileio import WriteError, atomic_file
from trainer.run.model_io import digest, read_safetensors

LATEST, PREVIOUS = "checkpoint.safetensors", "checkpoint.prev.safetensors"
FORMAT = "trainer-checkpoint/1"


@dataclass
class LoopState:
    """Where a training run is: enough to continue it bitwise-identically on numpy."""

    epoch: int = 1  # the epoch in progress (or next to start when step == 0)
    step: int = 0  # steps done in that epoch
    global_step: int = 0
    params: list[np.ndarray] = field(default_factory=list)
    velocities: list[np.ndarray] = field(default_factory=list)
    second: list[np.ndarray] = field(default_factory=list)  # Adam's second moments
    perm: np.ndarray | None = None  # this epoch's batch order (when step > 0)
    shift_ids: np.ndarray | None = None  # this epoch's shifts (when step > 0)
    loss_sum: float = 0.0  # this epoch's running figures (float32 values, exact in float64)
    correct: float = 0.0
    epoch_seconds: float = 0.0
    elapsed: float = 0.0
    rng: dict[str, Any] = field(default_factory=dict)  # bit-generator states by stream
    history: list[dict[str, Any]] = field(default_factory=list)
    best_accuracy: float | None = None
    best_epoch: int | None = None
    best_params: list[np.ndarray] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)  # config, limits, scaling: to restart it

    _ARRAYS = ("params", "velocities", "second", "best_params")

    def tensors(self) -> dict[str, np.ndarray]:
        out = {f"{name}.{i}": np.ascontiguousarray(a)
               for name in self._ARRAYS for i, a in enumerate(getattr(self, name))}
        for name in ("perm", "shift_ids"):
            if getattr(self, name) is not None:
                out[name] = np.ascontiguousarray(getattr(self, name))
        return out

    def scalars(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in (*self._ARRAYS, "perm", "shift_ids")}


def save_checkpoint(run_dir: str | Path, state: LoopState) -> Path:
    """Write `state` as the run's latest checkpoint, keeping the one before as the previous."""
    run_dir = Path(run_dir)
    tensors = state.tensors()
    meta = json.dumps(state.scalars(), allow_nan=False)
    blob = save(tensors, metadata={"format": FORMAT, "state": meta,
                                   "sha256": digest(tensors, meta)})
    latest = run_dir / LATEST
    try:
        # the previous whole checkpoint is kept until the new one is in place
        with atomic_file(latest, keep_previous=run_dir / PREVIOUS, sync_dir=True) as f:
            f.write(blob)
    except OSError as e:
        raise WriteError(f"cannot write checkpoint in {run_dir}: {e.strerror or e}; the last "
                         f"checkpoint is intact") from None
    return latest


def read_checkpoint(path: str | Path) -> LoopState:
    """One checkpoint file, verified against its recorded SHA-256 (DataError if anything is off)."""
    path = Path(path)
    meta, tensors = read_safetensors(path, "checkpoint")
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a trainer checkpoint (format {meta.get('format')!r})")
    found = digest(tensors, meta.get("state", ""))
    if found != meta.get("sha256"):
        raise DataError(f"{path}: checksum mismatch: expected {meta.get('sha256')}, "
                        f"found {found}")
    try:
        state = LoopState(**json.loads(meta["state"]))
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: damaged checkpoint state ({e})") from None
    for name in LoopState._ARRAYS:
        arrays, i = [], 0
        while f"{name}.{i}" in tensors:
            arrays.append(tensors[f"{name}.{i}"])
            i += 1
        setattr(state, name, arrays)
    state.perm, state.shift_ids = tensors.get("perm"), tensors.get("shift_ids")
    return state


def load_checkpoint(run_dir: str | Path, warn: Any = None) -> LoopState:
    """The run's latest good checkpoint: the latest, else (with a warning) the previous one."""
    run_dir = Path(run_dir)
    problems = []
    for name in (LATEST, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        try:
            state = read_checkpoint(path)
        except TrainerError as e:
            problems.append(str(e))
            continue
        if problems and warn is not None:
            warn(f"{problems[-1]}; resuming from the previous checkpoint {path.name} instead")
        return state
    raise DataError(f"no usable checkpoint in {run_dir}: " + "; ".join(problems))
