"""Classification metrics: a confusion matrix on the device, per-class figures from it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from trainer.core.network import predict

Array = Any


def confusion_matrix(labels: Array, predictions: Array, num_classes: int) -> Array:
    """counts[actual, predicted] as onehot(actual)^T @ onehot(predicted), on the arrays' device.

    float32 sums are exact up to 2**24 per cell, far above any test set here; integer matmul is
    not available on every device (CUDA in torch), so floats it is.
    """
    xp = array_namespace(labels, predictions)
    actual = onehot(xp, labels, num_classes, xp.float32)
    return xp.matrix_transpose(actual) @ onehot(xp, predictions, num_classes, xp.float32)


def hits(out: Array, onehot: Array) -> Array:
    """How many rows give their true class the largest output (ties: measure zero), as a device
    scalar: the numerator of the running accuracy."""
    xp = array_namespace(out, onehot)
    shifted = out - xp.max(out, axis=1, keepdims=True)  # 0 where a row has its largest
    return xp.sum(xp.where(shifted == 0.0, onehot, 0.0))


def onehot(xp: Any, labels: Array, classes: int, dtype: Any) -> Array:
    """(n, classes) rows with a 1 in each label's column, on the labels' device."""
    return xp.astype(labels[:, None] == xp.arange(classes, device=labels.device)[None, :], dtype)


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float  # = the per-class accuracy that neural-net-rs prints
    f1: float
    support: int


@dataclass(frozen=True)
class Report:
    """Everything the test report shows, computed from one confusion matrix."""

    confusion: np.ndarray  # int64 [actual, predicted]
    per_class: list[ClassMetrics]
    macro: ClassMetrics
    weighted: ClassMetrics

    @property
    def accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else 0.0

    def to_dict(self, class_names: list[str]) -> dict[str, Any]:
        def row(m: ClassMetrics) -> dict[str, Any]:
            return {"precision": m.precision, "recall": m.recall, "f1": m.f1,
                    "support": m.support}

        return {
            "accuracy": self.accuracy,
            "confusion_matrix": self.confusion.tolist(),
            "per_class": {name: row(m) for name, m in zip(class_names, self.per_class,
                                                           strict=True)},
            "macro_avg": row(self.macro),
            "weighted_avg": row(self.weighted),
        }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0  # scikit-learn's zero_division=0


def report(confusion: np.ndarray) -> Report:
    """Precision, recall, F1 and support per class, with macro and support-weighted averages."""
    cm = np.asarray(confusion).round().astype(np.int64)
    per_class = []
    for c in range(cm.shape[0]):
        tp, predicted, support = cm[c, c], cm[:, c].sum(), cm[c, :].sum()
        p, r = _ratio(tp, predicted), _ratio(tp, support)
        per_class.append(ClassMetrics(p, r, _ratio(2 * p * r, p + r), int(support)))
    total = sum(m.support for m in per_class)

    def average(weights: list[float]) -> ClassMetrics:
        w = np.asarray(weights, dtype=np.float64)
        w = w / w.sum() if w.sum() else w
        def mean(field: str) -> float:
            return float(sum(wi * getattr(m, field) for wi, m in zip(w, per_class, strict=True)))
        return ClassMetrics(mean("precision"), mean("recall"), mean("f1"), total)

    return Report(cm, per_class, average([1.0] * len(per_class)),
                  average([m.support for m in per_class]))


def evaluate(params: Sequence[Array], activations: Sequence[str], x: Array, labels: Array,
             num_classes: int, to_numpy: Callable[[Array], Any],
             on_chunk: Callable[[int, int], None] | None = None) -> tuple[Report, np.ndarray]:
    """The report and the predictions for `x`: computed on the device, read back once each."""
    pred = predict(params, activations, x, on_chunk=on_chunk)
    cm = to_numpy(confusion_matrix(labels, pred, num_classes))
    return report(cm), np.asarray(to_numpy(pred)).astype(np.int64)
