"""The SVG plots: valid XML, each series findable by id and drawn from the data, deterministic."""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from trainer.fileio import WriteError
from trainer.run.plots import confusion_svg, history_svg, mean_curve, overlay_svg, write_svg

SVG = "{http://www.w3.org/2000/svg}"
NAN = math.nan
HISTORY = [
    {"epoch": 1, "loss": 0.90, "train_accuracy": 0.70, "test_accuracy": 0.75, "seconds": 1.0},
    {"epoch": 2, "loss": 0.50, "train_accuracy": 0.85, "test_accuracy": 0.86, "seconds": 1.0},
    {"epoch": 3, "loss": 0.30, "train_accuracy": 0.90, "test_accuracy": NAN, "seconds": 1.0},
    {"epoch": 4, "loss": 0.20, "train_accuracy": 0.93, "test_accuracy": 0.91, "seconds": 1.0},
    {"epoch": 5, "loss": 0.15, "train_accuracy": 0.95, "seconds": 1.0},  # no test evaluation
]
CONFUSION = np.array([[987, 13, 0], [4, 1002, 21], [0, 7, 993]])
NAMES = ["zero", "one", "two"]


@pytest.fixture(scope="module")
def history_text() -> str:
    return history_svg(HISTORY, title="run-42")


@pytest.fixture(scope="module")
def confusion_text() -> str:
    return confusion_svg(CONFUSION, NAMES, title="run-42")


def by_id(svg: str, gid: str) -> ET.Element:
    found = ET.fromstring(svg).findall(f".//*[@id='{gid}']")
    assert len(found) == 1, f"{len(found)} elements with id {gid!r}"
    return found[0]


def line_vertices(svg: str, gid: str) -> list[list[tuple[float, float]]]:
    """The (x, y) points of the line in <g id=gid>, one list per unbroken stretch (M ... L ...)."""
    path = by_id(svg, gid).find(f"{SVG}path")  # its direct child; marker shapes sit in <defs>
    stretches: list[list[tuple[float, float]]] = []
    tokens = path.get("d").split()
    for i in range(0, len(tokens), 3):
        command, x, y = tokens[i:i + 3]
        if command == "M":
            stretches.append([])
        stretches[-1].append((float(x), float(y)))
    return stretches


def texts(svg: str) -> list[str]:
    return [t.text for t in ET.fromstring(svg).iter(f"{SVG}text") if t.text]


def test_history_has_each_series_title_and_axis_labels(history_text: str) -> None:
    for gid in ("loss", "train_accuracy", "test_accuracy"):
        assert by_id(history_text, gid).tag == f"{SVG}g"
    words = texts(history_text)
    assert "run-42" in words and "epoch" in words and "accuracy (%)" in words


def test_loss_line_follows_the_data(history_text: str) -> None:
    (points,) = line_vertices(history_text, "loss")
    assert len(points) == len(HISTORY)
    xs, ys = zip(*points, strict=True)
    assert list(xs) == sorted(xs) and len(set(xs)) == len(xs)  # one vertex per epoch, in order
    assert list(ys) == sorted(ys) and len(set(ys)) == len(ys)  # loss falls: SVG y grows down


def test_missing_test_accuracy_is_not_drawn(history_text: str) -> None:
    stretches = line_vertices(history_text, "test_accuracy")
    assert [len(s) for s in stretches] == [2, 1]  # epochs 1-2, then 4; 3 is NaN, 5 is missing
    (train,) = line_vertices(history_text, "train_accuracy")
    assert len(train) == len(HISTORY)


def test_history_without_any_test_accuracy_has_no_test_line() -> None:
    rows = [{k: v for k, v in row.items() if k != "test_accuracy"} for row in HISTORY]
    root = ET.fromstring(history_svg(rows))
    assert root.findall(".//*[@id='test_accuracy']") == []
    assert root.findall(".//*[@id='loss']")


def test_confusion_shows_every_count_labels_and_image(confusion_text: str) -> None:
    assert by_id(confusion_text, "confusion").tag == f"{SVG}g"  # the cells, drawn as paths
    words = texts(confusion_text)
    for count in CONFUSION.ravel():
        assert str(count) in words
    assert words.count("0") >= 2  # both zero cells are labelled
    for word in (*NAMES, "predicted", "actual", "run-42"):
        assert word in words


def test_confusion_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="n x n"):
        confusion_svg(np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="n x n"):
        confusion_svg(CONFUSION, NAMES[:2])


def test_same_input_gives_identical_bytes(history_text: str, confusion_text: str) -> None:
    assert history_svg(HISTORY, title="run-42") == history_text
    assert confusion_svg(CONFUSION, NAMES, title="run-42") == confusion_text


def test_write_svg_replaces_atomically(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "history.svg"
    write_svg(target, "<svg>old</svg>")
    write_svg(target, "<svg>new</svg>")
    assert target.read_text() == "<svg>new</svg>"
    assert os.listdir(tmp_path) == ["history.svg"]  # no temp file left behind

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(WriteError, match="No space left"):
        write_svg(target, "<svg>newer</svg>")
    assert target.read_text() == "<svg>new</svg>"
    assert os.listdir(tmp_path) == ["history.svg"]


def test_mean_curve_averages_the_runs_that_reached_each_epoch() -> None:
    got = mean_curve([np.array([1.0, 2.0, 3.0]), np.array([3.0, NAN]), np.array([5.0])])
    np.testing.assert_allclose(got, [3.0, 2.0, 3.0])
    assert np.isnan(mean_curve([np.array([NAN]), np.array([NAN])])).all()


def test_overlay_draws_each_run_and_a_mean_line_per_group() -> None:
    def run(accuracies: list[float]) -> list[dict[str, float]]:
        return [{"epoch": i + 1, "loss": 1.0 / (i + 1), "train_accuracy": a, "test_accuracy": a}
                for i, a in enumerate(accuracies)]

    svg = overlay_svg({"a": [run([0.80, 0.90, 0.94]), run([0.70, 0.86])],
                       "b": [run([0.60, 0.65])]}, title="group")
    (first,), (second,) = line_vertices(svg, "acc-a-0"), line_vertices(svg, "acc-a-1")
    (mean,) = line_vertices(svg, "acc-mean-a")
    assert len(mean) == 3
    for i in range(2):  # the accuracy axis is linear: the mean is halfway between the runs
        assert mean[i][1] == pytest.approx((first[i][1] + second[i][1]) / 2, abs=0.02)
    assert mean[2] == pytest.approx(first[2], abs=0.02)  # only the first run reached epoch 3
    assert len(line_vertices(svg, "loss-b-0")[0]) == 2
    assert not ET.fromstring(svg).findall(".//*[@id='acc-mean-b']")  # one run: no mean line
    assert "group" in texts(svg)
