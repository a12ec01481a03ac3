"""What the server knows about one run: its model, ready to predict; its info and history; and
the test images behind each cell of its confusion matrix. No web framework here: the routes in
app.py turn these answers into JSON and these errors into 4xx replies."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.backends import Backend
from trainer.data.dataset import Dataset, load_dataset
from trainer.data.images import decode_digit, prepare_digit
from trainer.errors import DataError, TrainerError, UsageError
from trainer.run.inference import Predictor, load_run

SIDE = 28  # what a JSON request without width and height sends: an MNIST-sized image
MIN_SIDE, MAX_SIDE = 8, 1024  # a drawing between a thumbnail and a large canvas
MAX_CELL_IMAGES = 200  # per request; a diagonal cell holds ~1,000 and is paged
MAX_HISTORY = 10_000  # epochs shown; a history.json is data from a file
MAX_TEXT = 200  # characters of any text taken from metrics.json


class RequestError(UsageError):
    """A request the server refuses; `status` is its HTTP code (422 unless said)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CellIndex:
    """The test set, each image's probabilities, and which of them fall into which cell."""

    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # int (N,)
    proba: np.ndarray  # float64 (N, classes)
    matrix: np.ndarray  # int (classes, classes), rows actual, columns predicted

    @classmethod
    def build(cls, predictor: Predictor, images: np.ndarray, labels: np.ndarray,
              classes: int) -> CellIndex:
        proba = predictor.proba(images)
        matrix = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(matrix, (labels.astype(np.int64), proba.argmax(axis=1)), 1)
        return cls(images, labels.astype(np.int64), proba, matrix)

    def members(self, actual: int, predicted: int) -> np.ndarray:
        """Indices of the test images of class `actual` predicted as `predicted`, the most
        confident mistakes first (ties by index)."""
        found = np.flatnonzero((self.labels == actual) & (self.proba.argmax(axis=1) == predicted))
        return found[np.argsort(-self.proba[found, predicted], kind="stable")]


class Service:
    """One run directory, loaded once (with the model's integrity check), answering requests."""

    def __init__(self, run_dir: str | Path, backend: Backend | str = "numpy",
                 data_dir: Path | None = None, data: Dataset | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.model, self.metrics = load_run(self.run_dir)
        self.predictor = Predictor(self.model, backend)
        self.class_names = self.model.class_names
        self.recorded = _matrix(self.metrics.get("confusion_matrix"), len(self.class_names))
        self.cells: CellIndex | None = None
        self.cells_missing = ""  # why there are no images behind the cells, if there are none
        self.note = ""  # a difference between the recorded matrix and the model's answers now
        self._index_test_set(data_dir, data)

    # --- predictions ---

    def predict_pixels(self, payload: Any) -> dict[str, Any]:
        """A JSON request {"pixels": [...], "width": W, "height": H} (W, H default 28):
        gray levels 0..255, row by row, prepared as `trainer predict` prepares a file."""
        notes: list[str] = []
        return self._answer(prepare_digit(pixels_image(payload), SIDE, source="the drawing",
                                          notes=notes), notes)

    def predict_image(self, data: bytes, name: str = "the uploaded image") -> dict[str, Any]:
        """An image file's bytes (PNG, JPEG, ...), read and prepared as `trainer predict` does."""
        if not data:
            raise RequestError("the body is empty: send an image file (PNG, JPEG, ...)", 400)
        notes: list[str] = []
        return self._answer(decode_digit(data, name, SIDE, notes=notes), notes)

    def _answer(self, digit: np.ndarray, notes: list[str]) -> dict[str, Any]:
        """The answer for a prepared digit, with why it is unlike the training data."""
        proba = self.predictor.proba(digit[None])[0]
        best = int(proba.argmax())
        return {"prediction": self.class_names[best], "index": best,
                "probabilities": [round(float(p), 6) for p in proba],
                "image": image_base64(digit),  # what the network saw
                "warnings": notes}

    # --- the run ---

    def info(self) -> dict[str, Any]:
        m, config = self.metrics, self.model.config
        data = m.get("data") if isinstance(m.get("data"), dict) else {}
        be = self.predictor.backend
        return {
            "run": _text(self.run_dir.resolve().name),
            "run_id": _text(self.model.run_id),
            "network": config.describe(),
            "parameters": int(sum(p.size for p in self.model.params)),
            "config": config.to_dict(),
            "input_scaling": self.model.scaling.to_dict(),
            "class_names": self.class_names,
            "dataset": {"source": _text(data.get("source")), "path": _text(data.get("path")),
                        "sha256": _text(data.get("sha256")),
                        "train_samples": _count(m.get("train_samples")),
                        "validation_samples": _count(m.get("validation_samples")),
                        "test_samples": _count(m.get("test_samples"))},
            "trained_on": {"backend": _text(m.get("backend")), "device": _text(m.get("device")),
                           "dtype": config.dtype},
            "serving_on": {"backend": be.name, "device": str(be.device)},
            "test_accuracy": _number(m.get("test_accuracy")),
            "train_accuracy": _number(m.get("train_accuracy")),
            "training_seconds": _number(m.get("total_seconds")),
            "best_epoch": _count(m.get("best_epoch")),
            "epochs_run": len(self.history()),
        }

    def history(self) -> list[dict[str, Any]]:
        """Per epoch: loss, accuracies, seconds, learning rate (numbers or None)."""
        rows = self.metrics.get("epochs")
        keys = ("epoch", "loss", "train_accuracy", "val_accuracy", "test_accuracy", "seconds",
                "learning_rate")
        if not isinstance(rows, list):
            return []
        return [{k: _number(row.get(k)) for k in keys}
                for row in rows[:MAX_HISTORY] if isinstance(row, dict)]

    def confusion(self) -> dict[str, Any]:
        return {"class_names": self.class_names,
                "matrix": None if self.recorded is None else self.recorded.tolist(),
                "images": self.cells is not None, "why_no_images": self.cells_missing,
                "note": self.note}

    def cell(self, actual: int, predicted: int, offset: int = 0,
             limit: int = 100) -> dict[str, Any]:
        """The test images of class `actual` the model predicts as `predicted`: `limit` of
        them from `offset`, each with its index, pixels and probabilities."""
        classes = len(self.class_names)
        if not (0 <= actual < classes and 0 <= predicted < classes):
            raise RequestError(f"no cell ({actual}, {predicted}): actual and predicted are "
                               f"class indices 0 to {classes - 1}", 404)
        if not (offset >= 0 and 1 <= limit <= MAX_CELL_IMAGES):
            raise RequestError(f"offset must be >= 0 and limit 1 to {MAX_CELL_IMAGES}, got "
                               f"offset={offset}, limit={limit}")
        if self.cells is None:
            raise RequestError(f"the test images are not available: {self.cells_missing}", 503)
        found = self.cells.members(actual, predicted)
        return {"actual": actual, "predicted": predicted, "count": len(found), "offset": offset,
                "images": [{"index": int(i),
                            "image": image_base64(self.cells.images[i]),
                            "probabilities": [round(float(p), 6) for p in self.cells.proba[i]]}
                           for i in found[offset:offset + limit]]}

    def _index_test_set(self, data_dir: Path | None, data: Dataset | None) -> None:
        """Find the run's test images (the data must be the data it was tested on) and run
        the model over them; without them the page shows the matrix, not the images."""
        tested = _count(self.metrics.get("test_samples"))
        if self.recorded is None or not tested:
            self.cells_missing = "the run's metrics.json records no confusion matrix"
            return
        try:
            data = data if data is not None else load_dataset(
                data_dir, dataset=self.model.dataset or "mnist", fetch=False)
            recorded = self.model.data_sha256
            if recorded and data.fingerprint() != recorded:
                raise DataError(f"the data in {data.path} is not the data this run was tested "
                                f"on (its SHA-256 differs); pass --data-dir")
            data = data.limit(None, tested)
            self.cells = CellIndex.build(self.predictor, data.test_images, data.test_labels,
                                         len(self.class_names))
        except TrainerError as e:
            self.cells_missing = str(e)
            return
        differ = int(np.abs(self.cells.matrix - self.recorded).sum()) // 2
        if differ:
            self.note = (f"{differ} of {tested} test images fall into another cell now than "
                         f"in the recorded matrix (another backend's rounding)")


def image_base64(digit: np.ndarray) -> str:
    """A uint8 image as base64 of its bytes, row by row: 1 KB of JSON for 28x28, encoded in
    ~6 us, where a list of 784 numbers takes 2.5 KB and ~60 us (a tenth of a prediction)."""
    return base64.b64encode(np.ascontiguousarray(digit, dtype=np.uint8).tobytes()).decode()


def pixels_image(payload: Any) -> np.ndarray:
    """The gray image (height, width) a JSON predict request describes, or RequestError."""
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise RequestError('expected a JSON object {"pixels": [gray levels 0..255, row by '
                           'row], "width": 28, "height": 28} (width and height optional)')
    unknown = sorted(set(payload) - {"pixels", "width", "height"})
    if unknown:
        raise RequestError(f"unknown key {unknown[0]!r:.60}; allowed: pixels, width, height")
    width, height = (_side(payload, key) for key in ("width", "height"))
    pixels = payload["pixels"]
    if not isinstance(pixels, list):
        raise RequestError(f"pixels must be a flat list of numbers, got "
                           f"{type(pixels).__name__}")
    if len(pixels) != width * height:
        raise RequestError(f"pixels must hold width x height = {width} x {height} = "
                           f"{width * height} values, got {len(pixels)}")
    try:
        values = np.asarray(pixels)
    except (ValueError, OverflowError):  # ragged nesting, an integer beyond 64 bits
        values = np.asarray([], dtype=object)
    if values.ndim != 1 or values.dtype.kind not in "iuf":
        raise RequestError("pixels must be a flat list of numbers (gray levels 0 to 255)")
    values = values.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 255))
    if bad.size:
        i = int(bad[0])
        raise RequestError(f"pixels[{i}] is {pixels[i]!r:.30}: every value must be a finite "
                           f"gray level from 0 to 255 ({bad.size} of {values.size} are not)")
    return values.reshape(height, width)


def _side(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key, SIDE)
    if isinstance(value, bool) or not isinstance(value, int) or not (
            MIN_SIDE <= value <= MAX_SIDE):
        raise RequestError(f"{key} must be a whole number from {MIN_SIDE} to {MAX_SIDE}, got "
                           f"{value!r:.30}")
    return value


def _matrix(value: Any, classes: int) -> np.ndarray | None:
    """metrics.json's confusion matrix if it is one (classes x classes counts), else None."""
    try:
        m = np.asarray(value)
    except ValueError:
        return None
    if m.shape != (classes, classes) or m.dtype.kind not in "iu" or (m < 0).any():
        return None
    return m.astype(np.int64)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    """Text from a file, bounded, control characters dropped (the page shows it as text)."""
    if value is None:
        return None
    return "".join(c for c in str(value)[:MAX_TEXT] if c.isprintable())
