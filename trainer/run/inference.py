"""Using a saved model: evaluate it on a test set, or classify images, on any backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trainer.backends import Backend
from trainer.core.metrics import Report, evaluate
from trainer.core.network import forward
from trainer.data.dataset import Dataset
from trainer.errors import DataError, UsageError
from trainer.run.catalog import read_run
from trainer.run.model_io import SavedModel, load_model
from trainer.run.train import load_backend


def load_run(run_dir: str | Path) -> tuple[SavedModel, dict[str, Any]]:
    """The model of a run directory and its recorded metrics ({} if there are none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a run directory")
    model_path = run_dir / "model.safetensors"
    if not model_path.exists():
        raise DataError(f"{run_dir} holds no model.safetensors: {_no_model(run_dir)}")
    model = load_model(model_path)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        metrics = {}
    except (OSError, ValueError, RecursionError) as e:
        raise DataError(f"cannot read {run_dir / 'metrics.json'}: {e}") from None
    metrics = metrics if isinstance(metrics, dict) else {}
    recorded = metrics.get("run_id")
    if recorded is not None and recorded != model.run_id:
        raise DataError(f"{model_path} belongs to run {model.run_id or 'unknown'!r:.40}, but "
                        f"{run_dir / 'metrics.json'} records run {str(recorded)!r:.40}: a model "
                        f"copied in from another run?")
    return model, metrics


def _no_model(run_dir: Path) -> str:
    """Why a run has no model, from what its directory holds."""
    try:
        info = read_run(run_dir)
    except UsageError:
        return "it is not a run directory trainer wrote"
    if info.state == "diverged":
        message = info.metrics.get("message")
        return (f"the run diverged in epoch {info.epochs_done or '?'}, so it has no model to "
                f"use" + (f" ({str(message)[:300]})" if isinstance(message, str) else "")
                + "; train it again with a smaller learning_rate")
    if info.state in ("interrupted", "running"):
        return (f"the run is {info.state} after {info.epochs_done} epoch(s): let it finish, "
                f"or resume it with `trainer train --resume {run_dir}`")
    return "was the run finished?"


def _device_params(model: SavedModel, backend: Backend) -> list[Any]:
    return [backend.asarray(p.astype(model.config.dtype)) for p in model.params]


def _loaded(backend: Backend | str) -> Backend:
    return load_backend(backend) if isinstance(backend, str) else backend


def evaluate_model(model: SavedModel, data: Dataset, backend: Backend | str = "numpy", *,
                   limit_test: int | None = None,
                   on_chunk: Callable[[int, int], None] | None = None,
                   ) -> tuple[Report, np.ndarray]:
    """The test report of `model` on `data`'s test set (its first `limit_test` images)."""
    config = model.config
    if config.sizes[0] != data.input_size or config.sizes[-1] != data.num_classes:
        raise DataError(f"the model takes {config.sizes[0]} inputs and gives {config.sizes[-1]} "
                        f"classes; the data has {data.input_size} pixels and "
                        f"{data.num_classes} classes")
    backend = _loaded(backend)
    data = data.limit(None, limit_test)
    with backend.scope():
        x = backend.asarray(model.scaling.apply(data.test_images, dtype=config.dtype))
        y = backend.asarray(data.test_labels.astype(np.int64))
        return evaluate(_device_params(model, backend), config.activations, x, y,
                        data.num_classes, backend.to_numpy, on_chunk=on_chunk)


# a floor for the sum that normalises non-softmax outputs: all-zero rows stay zero, not NaN
TINY_SUM = 1e-300


class Predictor:
    """A model's weights on a backend, moved there once, for repeated predictions (a server)."""

    def __init__(self, model: SavedModel, backend: Backend | str = "numpy") -> None:
        self.model = model
        self.backend = _loaded(backend)
        with self.backend.scope():
            self._params = _device_params(model, self.backend)

    def proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for uint8 images (N, rows, cols) prepared like MNIST.

        A softmax output is a probability already; any other output is normalised to sum to 1
        so that the ranking and the shares stay comparable.
        """
        config = self.model.config
        if int(np.prod(images.shape[1:])) != config.sizes[0]:
            raise DataError(f"the model takes {config.sizes[0]} pixels, the images have "
                            f"{int(np.prod(images.shape[1:]))}")
        with self.backend.scope():
            x = self.backend.asarray(self.model.scaling.apply(images, dtype=config.dtype))
            outs = forward(self._params, config.activations, x)[0]
            out = np.asarray(self.backend.to_numpy(outs[-1]), dtype=np.float64)
        if config.activations[-1] != "softmax":
            out = np.clip(out, 0.0, None)
            out = out / np.maximum(out.sum(axis=1, keepdims=True), TINY_SUM)
        return out


def predict_proba(model: SavedModel, images: np.ndarray,
                  backend: Backend | str = "numpy") -> np.ndarray:
    """`Predictor(model, backend).proba(images)`, for one batch."""
    return Predictor(model, backend).proba(images)
