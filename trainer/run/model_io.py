"""Saved models: safetensors weights, with the config, input scaling, class names, the run's id
and a SHA-256 of it all in the metadata, checked on every load."""

from __future__ import annotations

import hashlib
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
MAX_CLASS_NAME = 40  # characters: a class name is a label in a table, not a text


@dataclass(frozen=True)
class SavedModel:
    config: Config
    params: list[np.ndarray]  # [W0, b0, W1, b1, ...]
    scaling: InputScaling
    class_names: list[str]
    run_id: str = ""  # the run that trained it (metrics.json records the same id)
    data_sha256: str = ""  # Dataset.fingerprint() of the data it was trained and tested on
    dataset: str = ""  # the dataset's name (mnist, fashion-mnist, ...); "" before 2026-11-30


def digest(tensors: dict[str, np.ndarray], meta: str) -> str:
    """SHA-256 of the tensors (names, dtypes, shapes, bytes) and a metadata string."""
    h = hashlib.sha256(meta.encode())
    for key in sorted(tensors):
        a = tensors[key]
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _key(i: int) -> str:
    return f"layers.{i // 2}.{'weight' if i % 2 == 0 else 'bias'}"


def save_model(path: str | Path, model: SavedModel) -> None:
    tensors = {_key(i): np.ascontiguousarray(p) for i, p in enumerate(model.params)}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "input_scaling": json.dumps(model.scaling.to_dict()),
        "class_names": json.dumps(model.class_names),
        "run_id": model.run_id,
        "data_sha256": model.data_sha256,
        "dataset": model.dataset,
    }
    metadata["sha256"] = digest(tensors, json.dumps(metadata, sort_keys=True))
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
        raise DataError(f"{path}: not a trainer model (format {meta.get('format')!r:.40}, "
                        f"expected {FORMAT!r})")
    recorded = meta.pop("sha256", None)
    if recorded is None:
        raise DataError(f"{path}: the model has no checksum (saved before 2026-11-30, or not by "
                        f"trainer): train it again")
    found = digest(tensors, json.dumps(meta, sort_keys=True))
    if found != recorded:
        raise DataError(f"{path}: checksum mismatch: the file is damaged or was edited "
                        f"(expected {recorded:.64}, found {found})")
    try:
        config = Config.from_dict(json.loads(meta["config"]), source=f"{path} metadata")
        scaling = InputScaling.from_dict(json.loads(meta["input_scaling"]))
        class_names = _class_names(json.loads(meta["class_names"]), config.sizes[-1], path)
        params = [tensors[_key(i)] for i in range(2 * (len(config.sizes) - 1))]
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: incomplete model metadata or weights ({e})") from None
    except RecursionError:
        raise DataError(f"{path}: model metadata nested too deeply") from None
    except TrainerError as e:
        raise DataError(f"{path}: {e}") from None
    for i, p in enumerate(params):
        fan_in, fan_out = config.sizes[i // 2], config.sizes[i // 2 + 1]
        want = (fan_in, fan_out) if i % 2 == 0 else (fan_out,)
        if p.shape != want:
            raise DataError(f"{path}: {_key(i)} has shape {p.shape}, the config says {want}")
    return SavedModel(config, params, scaling, class_names, str(meta.get("run_id", "")),
                      str(meta.get("data_sha256", "")), str(meta.get("dataset", ""))[:40])


def _class_names(names: object, classes: int, path: Path) -> list[str]:
    """As many printable names as the network has outputs, each 1 to MAX_CLASS_NAME long."""
    if not isinstance(names, list) or len(names) != classes:
        count = len(names) if isinstance(names, list) else type(names).__name__
        raise DataError(f"{path}: class_names must list {classes} names, one per output of "
                        f"the network, got {count}")
    for name in names:
        if (not isinstance(name, str) or not 1 <= len(name) <= MAX_CLASS_NAME
                or not name.isprintable()):
            raise DataError(f"{path}: class name {ascii(name)[:60]} is not a printable name of "
                            f"1 to {MAX_CLASS_NAME} characters")
    return names
