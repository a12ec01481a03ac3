"""`trainer predict` on phone photos made in the test (a lit gradient, a shadow): read as the
digit they show; what the network saw shown (--show) and saved (--save-inputs); a warning where
the prepared image is unlike the training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from photos import phone_photo
from PIL import Image
from typer.testing import CliRunner

from trainer.cli.app import app
from trainer.data.images import load_digit, prepare_digit

pytestmark = pytest.mark.slow  # MNIST's model (session fixture) and ten 640x480 photos


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def photos(mnist, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[int]]:
    folder = tmp_path_factory.mktemp("photos")
    paths, labels = [], []
    for i in range(10):
        path = folder / f"photo-{i}.jpg"
        path.write_bytes(phone_photo(mnist.test_images[i], seed=i))
        paths.append(path)
        labels.append(int(mnist.test_labels[i]))
    return paths, labels


def test_photos_on_a_lit_gradient_with_a_shadow_are_read_right(mnist_run, photos,
                                                               tmp_path: Path) -> None:
    paths, labels = photos
    result = run("predict", mnist_run, *paths, "--json", "--save-inputs", tmp_path / "seen")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    right = [row["prediction"] == str(label) for row, label in zip(rows, labels, strict=True)]
    assert sum(right) >= 9, (right, [r["prediction"] for r in rows])
    assert all(row["warnings"] == [] for row in rows)  # a photo like these is fine
    for row, path in zip(rows, paths, strict=True):  # what was saved is what the network saw
        saved = np.asarray(Image.open(row["input"]))
        assert Path(row["input"]) == tmp_path / "seen" / f"{path.stem}.png"
        assert np.array_equal(saved, load_digit(path))


def test_show_prints_the_28x28_in_block_characters(mnist_run, photos) -> None:
    paths, labels = photos
    result = run("predict", mnist_run, paths[0], "--show")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("┌"))
    frame = lines[top:top + 30]
    assert frame[-1].startswith("└") and all(len(line) == 58 for line in frame)
    digit = load_digit(paths[0])
    for row, line in zip(digit, frame[1:-1], strict=True):  # blank where the image is black
        assert [c != " " for c in line[1:-1:2]] == list(row >= 256 // 5)


def test_an_image_unlike_the_training_data_is_warned_about(mnist_run, tmp_path: Path) -> None:
    # the old page's mistake: a light photo letterboxed onto the black pad, a gray rectangle
    pad = np.zeros((140, 140), np.uint8)
    pad[30:110, 5:135] = 180
    Image.fromarray(pad).save(tmp_path / "letterboxed.png")
    faint = np.full((100, 100), 200, np.uint8)
    faint[20:80, 45:55] = 180  # a 1, 20 gray levels darker than the paper
    Image.fromarray(faint).save(tmp_path / "faint.png")
    result = run("predict", mnist_run, tmp_path / "letterboxed.png", tmp_path / "faint.png",
                 "--json")
    assert result.exit_code == 0, result.output
    letterboxed, faint_row = json.loads(result.stdout)
    assert len(letterboxed["warnings"]) == 1 and "ink covers" in letterboxed["warnings"][0]
    assert len(faint_row["warnings"]) == 1 and "very low contrast" in faint_row["warnings"][0]
    shown = " ".join(run("predict", mnist_run, tmp_path / "faint.png").output.split())
    assert "warning: " in shown and "the ink stands 20 gray levels out" in shown
    notes: list[str] = []  # an MNIST-like digit: nothing to say
    digit = np.zeros((28, 28))
    digit[4:24, 12:16] = 255
    prepare_digit(digit, notes=notes)
    assert notes == []
