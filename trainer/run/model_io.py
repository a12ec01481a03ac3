"""Saved models: safetensors weights, with the config, input scaling and class names in metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from trainer.core.config import Config
from trainer.data.dataset import InputScaling
from trainer.errors import DataError, TrainerError
from trainer.fileio import atomic_write_bytes

FORMAT = "trainer-mlp/1"


@dataclass(frozen=True)
class SavedModel:
    config: Config
    params: list[np.ndarray]  # [W0, b0, W1, b1, ...]
    scaling: InputScaling
    class_names: list[str]


def _key(i: int) -> str:
    return f"layers.{i // 2}.{'weight' if i % 2 == 0 else 'bias'}"


def save_model(path: str | Path, model: SavedModel) -> None:
    tensors = {_key(i): np.ascontiguousarray(p) for i, p in enumerate(model.params)}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "input_scaling": json.dumps(model.scaling.to_dict()),
        "class_names": json.dumps(model.class_names),
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def read_safetensors(path: Path, what: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, tensors) of a safetensors file; DataError naming it if it cannot be read."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError, ValueError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None
    return meta, tensors


def load_model(path: str | Path) -> SavedModel:
    path = Path(path)
    meta, tensors = read_safetensors(path, "model")
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a trainer model (format {meta.get('format')!r}, "
                        f"expected {FORMAT!r})")
    try:
        config = Config.from_dict(json.loads(meta["config"]), source=f"{path} metadata")
        scaling = InputScaling.from_dict(json.loads(meta["input_scaling"]))
        class_names = [str(c) for c in json.loads(meta["class_names"])]
        params = [tensors[_key(i)] for i in range(2 * (len(config.sizes) - 1))]
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: incomplete model metadata or weights ({e})") from None
    except TrainerError as e:
        raise DataError(f"{path}: {e}") from None
    for i, p in enumerate(params):
        fan_in, fan_out = config.sizes[i // 2], config.sizes[i // 2 + 1]
        want = (fan_in, fan_out) if i % 2 == 0 else (fan_out,)
        if p.shape != want:
            raise DataError(f"{path}: {_key(i)} has shape {p.shape}, the config says {want}")
    return SavedModel(config, params, scaling, class_names)
