"""Metrics against hand counts, computed on every backend."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from trainer import backends
from trainer.core.metrics import confusion_matrix, report

# 3 classes; class 2 occurs twice but is never predicted
LABELS = [0, 0, 0, 1, 1, 2, 2, 1, 0, 1]
PREDS = [0, 1, 0, 1, 1, 1, 0, 1, 0, 0]
HAND = np.array([[3, 1, 0],   # actual 0: three right, one called 1
                 [1, 3, 0],   # actual 1: three right, one called 0
                 [1, 1, 0]])  # actual 2: never right, never predicted


def test_confusion_matrix_counts_by_hand(backend: backends.Backend) -> None:
    labels = backend.asarray(np.array(LABELS, dtype=np.int64))
    preds = backend.asarray(np.array(PREDS, dtype=np.int64))
    cm = np.asarray(backend.to_numpy(confusion_matrix(labels, preds, 3)))
    np.testing.assert_array_equal(cm, HAND)


def test_per_class_metrics_by_hand() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a never-predicted class must not divide by zero
        rep = report(HAND)
    p0, r0 = 3 / 5, 3 / 4  # class 0: predicted 5 times, 3 right; 4 actual
    p1, r1 = 3 / 5, 3 / 4
    assert rep.per_class[0].precision == pytest.approx(p0)
    assert rep.per_class[0].recall == pytest.approx(r0)
    assert rep.per_class[0].f1 == pytest.approx(2 * p0 * r0 / (p0 + r0))
    assert rep.per_class[1].precision == pytest.approx(p1)
    assert rep.per_class[1].recall == pytest.approx(r1)
    assert rep.per_class[2].precision == 0.0  # never predicted: defined as 0
    assert rep.per_class[2].recall == 0.0 and rep.per_class[2].f1 == 0.0
    assert [m.support for m in rep.per_class] == [4, 4, 2]
    assert rep.accuracy == pytest.approx(6 / 10)
    f1 = 2 * p0 * r0 / (p0 + r0)
    assert rep.macro.f1 == pytest.approx((f1 + f1 + 0) / 3)
    assert rep.weighted.f1 == pytest.approx((4 * f1 + 4 * f1 + 0) / 10)
    assert rep.weighted.recall == pytest.approx(rep.accuracy)  # weighted recall is accuracy
    assert rep.macro.support == 10


def test_report_matches_scikit_learn_style_definitions_on_random_data() -> None:
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 5, 500), rng.integers(0, 5, 500)
    cm = np.zeros((5, 5), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)  # an independent count, unlike the matmul on the device
    computed = confusion_matrix(labels, preds, 5)
    np.testing.assert_array_equal(computed, cm)
    rep = report(cm)
    for c in range(5):
        tp = np.sum((labels == c) & (preds == c))
        assert rep.per_class[c].precision == pytest.approx(tp / np.sum(preds == c))
        assert rep.per_class[c].recall == pytest.approx(tp / np.sum(labels == c))


def test_report_dict_names_classes() -> None:
    d = report(HAND).to_dict(["zero", "one", "two"])
    assert d["confusion_matrix"] == HAND.tolist()
    assert set(d["per_class"]) == {"zero", "one", "two"}
    assert d["per_class"]["two"]["support"] == 2
