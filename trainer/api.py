"""The Python API a notebook or a script uses: `train` (with a run directory and a live
display, like `trainer train`) and `load_run` (a finished run, ready to predict and evaluate)."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.backends import Backend
from trainer.core.config import Config
from trainer.core.metrics import Report
from trainer.data.dataset import Dataset, load_dataset
from trainer.fileio import atomic_write_json
from trainer.run import inference
from trainer.run.auto import resolve_backend
from trainer.run.catalog import resolve_run
from trainer.run.checkpoint import LoopState, save_checkpoint
from trainer.run.model_io import SavedModel
from trainer.run.results import Callbacks, DivergedError, Engine, TrainResult
from trainer.run.rundir import (
    claim_run_dir,
    diverged_metrics,
    hold_run,
    run_metrics,
    run_record,
    write_run,
)
from trainer.run.train import load_backend
from trainer.run.train import train as train_only


def train(config: Config, data: Dataset, backend: Backend | str = "numpy", *,
          limit_train: int | None = None, limit_test: int | None = None,
          callbacks: Callbacks | None = None, engine: Engine | None = None,
          run_dir: str | Path | None = None, name: str = "python",
          progress: bool = False, resume: LoopState | None = None) -> TrainResult:
    """Train `config` on `data` (trainer.run.train.train), and with `run_dir` write a run
    directory there as `trainer train --run-dir` does (config, a checkpoint every epoch, then
    the model, history, metrics and plots; `trainer runs`, `evaluate`, `serve` and
    `load_run` read it). `progress`: rich's live bars and a line per epoch, in a terminal or a
    Jupyter notebook (whose live bars need ipywidgets). `resume`: a checkpoint's state."""
    callbacks = callbacks or Callbacks()
    # a name; auto: the fastest backend here for `config` (run/auto.py)
    loaded = load_backend(resolve_backend(backend, [config])[0]) if isinstance(backend, str) \
        else backend
    display: Any = contextlib.nullcontext()
    if progress:
        from trainer.cli.console import console
        from trainer.cli.display import TrainProgress  # rich's display: the CLI's own

        display = TrainProgress(console, config.epochs, live=True)
        callbacks = dataclasses.replace(
            callbacks, on_step=_both(callbacks.on_step, display.on_step),
            on_epoch=_both(callbacks.on_epoch, display.on_epoch),
            on_test_chunk=_both(callbacks.on_test_chunk, display.on_test_chunk))
    if run_dir is None:
        with display:
            return train_only(config, data, loaded, limit_train=limit_train,
                              limit_test=limit_test, callbacks=callbacks, engine=engine,
                              resume=resume)
    path = claim_run_dir(run_dir, name)
    atomic_write_json(path / "config.json", config.to_dict())
    fingerprint = data.fingerprint()
    record = run_record(config, name, limit_train, limit_test, data, fingerprint, loaded.name)
    callbacks = dataclasses.replace(callbacks, checkpoint=_both(
        callbacks.checkpoint,
        lambda st: save_checkpoint(path, dataclasses.replace(st, run=record))))
    with hold_run(path), display:
        try:
            result = train_only(config, data, loaded, limit_train=limit_train,
                                limit_test=limit_test, callbacks=callbacks, engine=engine,
                                resume=resume)
        except DivergedError as e:
            atomic_write_json(path / "metrics.json", diverged_metrics(e, loaded.name, config))
            raise
        metrics = run_metrics(result, data.class_names, loaded.version, data, fingerprint)
        write_run(path, result, data.class_names, metrics, title=name)
    return result


def _both(first: Any, second: Any) -> Any:
    """One callback that calls `first` (if any) and then `second`."""
    if first is None:
        return second
    return lambda *args: (first(*args), second(*args))[1]


@dataclass
class LoadedRun:
    """A finished run: its model, its recorded metrics and where it is."""

    path: Path
    model: SavedModel
    metrics: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    def predict_proba(self, images: np.ndarray, backend: Backend | str = "numpy") -> np.ndarray:
        """Class probabilities (N, classes) of uint8 images (N, 28, 28) or one (28, 28),
        prepared as MNIST's (trainer.data.images.load_digit prepares a file so)."""
        images = np.asarray(images)
        single = images.ndim == 2
        proba = inference.predict_proba(self.model, images[None] if single else images, backend)
        return proba[0] if single else proba

    def predict(self, images: np.ndarray, backend: Backend | str = "numpy") -> list[str]:
        """The predicted class name of each image."""
        proba = self.predict_proba(np.asarray(images).reshape(-1, *np.shape(images)[-2:]),
                                   backend)
        return [self.class_names[i] for i in proba.argmax(axis=1)]

    def evaluate(self, data: Dataset | None = None, backend: Backend | str = "numpy", *,
                 limit_test: int | None = None) -> Report:
        """The model's test report on `data` (default: the dataset it was trained on, from the
        cache, fetched if need be), on as many test images as it was tested on."""
        if data is None:
            data = load_dataset(dataset=self.model.dataset or "mnist")
        recorded = self.metrics.get("test_samples")
        limit = limit_test or (recorded if isinstance(recorded, int) and recorded else None)
        return inference.evaluate_model(self.model, data, backend, limit_test=limit)[0]


def load_run(run: str | Path) -> LoadedRun:
    """A run by its directory, its id from `trainer runs`, or "latest"."""
    path = resolve_run(run)
    model, metrics = inference.load_run(path)
    return LoadedRun(path, model, metrics)
