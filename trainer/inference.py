"""Using a saved model: evaluate it on a test set, or classify images, on any backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from backends import Backend
from trainer.data import Dataset
from trainer.errors import DataError, UsageError
from trainer.metrics import Report
from trainer.model_io import SavedModel, load_model
from trainer.network import forward
from trainer.train import evaluate, load_backend


def load_run(run_dir: str | Path) -> tuple[SavedModel, dict[str, Any]]:
    """The model of a run directory and its recorded metrics ({} if there are none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a run directory")
    model_path = run_dir / "model.safetensors"
    if not model_path.exists():
        raise DataError(f"{run_dir} holds no model.safetensors: was the run finished?")
    model = load_model(model_path)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        metrics = {}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {run_dir / 'metrics.json'}: {e}") from None
    return model, metrics if isinstance(metrics, dict) else {}


def _device_params(model: SavedModel, be: Backend) -> list[Any]:
    return [be.asarray(p.astype(model.config.dtype)) for p in model.params]


def evaluate_model(model: SavedModel, data: Dataset, backend: Backend | str = "numpy", *,
                   device: str | None = None, limit_test: int | None = None,
                   on_chunk: Callable[[int, int], None] | None = None,
                   ) -> tuple[Report, np.ndarray]:
    """The test report of `model` on `data`'s test set (its first `limit_test` images)."""
    config = model.config
    pixels = int(np.prod(data.test_images.shape[1:]))
    if config.sizes[0] != pixels or config.sizes[-1] != data.num_classes:
        raise DataError(f"the model takes {config.sizes[0]} inputs and gives {config.sizes[-1]} "
                        f"classes; the data has {pixels} pixels and {data.num_classes} classes")
    be = load_backend(backend, device)
    data = data.limit(None, limit_test)
    x = be.asarray(model.scaling.apply(data.test_images, dtype=config.dtype))
    y = be.asarray(data.test_labels.astype(np.int64))
    return evaluate(_device_params(model, be), config.activations, x, y, data.num_classes,
                    be.to_numpy, on_chunk=on_chunk)


def predict_proba(model: SavedModel, images: np.ndarray, backend: Backend | str = "numpy", *,
                  device: str | None = None) -> np.ndarray:
    """Class probabilities (N, classes) for uint8 images (N, rows, cols) prepared like MNIST.

    A softmax output is a probability already; any other output is normalised to sum to 1 so
    that the ranking and the shares stay comparable.
    """
    config = model.config
    if int(np.prod(images.shape[1:])) != config.sizes[0]:
        raise DataError(f"the model takes {config.sizes[0]} pixels, the images have "
                        f"{int(np.prod(images.shape[1:]))}")
    be = load_backend(backend, device)
    x = be.asarray(model.scaling.apply(images, dtype=config.dtype))
    out = np.asarray(be.to_numpy(forward(_device_params(model, be), config.activations, x)[0][-1]),
                     dtype=np.float64)
    if config.activations[-1] != "softmax":
        out = np.clip(out, 0.0, None)
        out = out / np.maximum(out.sum(axis=1, keepdims=True), 1e-300)
    return out
