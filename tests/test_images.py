"""Digit images from files, prepared as MNIST was: 20 px box, centred by mass, white on black."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.images import load_digit, load_digits, prepare_digit
from trainer.errors import DataError

N_ROUND_TRIP = 20  # MNIST test images saved and read back
N_LARGE = 8  # of those, also drawn large, off-centre, as JPEG


def centre_of_mass(image: np.ndarray) -> np.ndarray:
    """(row, column) in pixel indices, as MNIST's creators measured it: MNIST's own are at 14."""
    w = image.astype(np.float64)
    r = np.arange(image.shape[0])
    return np.array([w.sum(axis=1) @ r, w.sum(axis=0) @ r]) / w.sum()


def box_side(image: np.ndarray, fraction: float = 0.05) -> int:
    """The longer side of the bounding box of pixels above `fraction` of the maximum."""
    ys, xs = np.nonzero(image > fraction * image.max())
    return int(max(np.ptp(ys), np.ptp(xs))) + 1


def save(array: np.ndarray, path: Path, **options) -> Path:
    Image.fromarray(array).save(path, **options)
    return path


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    return mnist.test_images[:N_ROUND_TRIP]


def test_mnist_round_trip_is_close(digits: np.ndarray, tmp_path: Path):
    # Over all 10,000 test images the mean absolute difference is 0.03 gray levels (p99: 0.2):
    # only faint fringe pixels (<= 12 of 255) just outside the 5% ink box are dropped, and 9
    # images move by one pixel where MNIST's rounding of the centre of mass was a tie.
    results = load_digits([save(x, tmp_path / f"{i}.png") for i, x in enumerate(digits)])
    assert results.shape == digits.shape and results.dtype == np.uint8
    mad = np.abs(results.astype(np.int16) - digits).mean(axis=(1, 2))
    assert mad.max() < 1.0, mad
    assert (mad == 0).mean() >= 0.75  # most come back identical
    for original, result in zip(digits, results, strict=True):
        # MNIST's own centres of mass are within half a pixel of (14, 14): ours the same way
        assert np.abs(centre_of_mass(original) - 14).max() <= 0.5
        assert np.abs(centre_of_mass(result) - 14).max() <= 0.5
        assert box_side(result, 0) == box_side(original, 0) == 20


def test_black_on_white_gives_the_same_digit(digits: np.ndarray, tmp_path: Path):
    for i, x in enumerate(digits):
        direct = load_digit(save(x, tmp_path / f"{i}.png"))
        inverted = load_digit(save(255 - x, tmp_path / f"{i}-inverted.png"))
        assert np.abs(inverted.astype(np.int16) - direct).max() <= 1


def best_shifted_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of a and b, the best over shifts of at most one pixel (rounding ties)."""
    a = a.astype(np.float64)
    return max(
        float(np.corrcoef(np.roll(a, (dy, dx), axis=(0, 1)).ravel(), b.ravel())[0, 1])
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


@pytest.mark.parametrize("dark_on_light", [False, True], ids=["white-on-black", "black-on-white"])
def test_large_off_centre_jpeg_is_centred_and_scaled(digits, tmp_path, dark_on_light: bool):
    for i, x in enumerate(digits[:N_LARGE]):
        large = Image.fromarray(x).resize((140, 140), Image.Resampling.BICUBIC)
        canvas = Image.new("L", (300, 200), 0)
        canvas.paste(large, (150, 45))  # off-centre: right of the middle, low
        drawing = np.asarray(canvas)
        drawing = 255 - drawing if dark_on_light else drawing
        result = load_digit(save(drawing, tmp_path / f"{i}.jpg", quality=90))
        assert result.shape == (28, 28) and result.dtype == np.uint8
        assert np.abs(centre_of_mass(result) - 14).max() <= 0.5
        assert abs(box_side(result) - 20) <= 1
        # up 5x, JPEG, down 5x blurs: over 500 test images the worst correlation is 0.86
        assert best_shifted_correlation(result, x) > 0.85


def test_pgm_8_and_16_bit(digits: np.ndarray, tmp_path: Path):
    x = digits[0]
    expected = load_digit(save(x, tmp_path / "d.png"))
    assert np.array_equal(load_digit(save(x, tmp_path / "d.pgm")), expected)
    sixteen = tmp_path / "d16.pgm"
    sixteen.write_bytes(b"P5 28 28 65535\n" + (x.astype(">u2") * 257).tobytes())
    assert np.array_equal(load_digit(sixteen), expected)


@pytest.mark.parametrize("ink", [(0, 0, 0), (255, 255, 255), (0, 0, 255)],
                         ids=["black", "white", "blue"])
def test_rgba_on_transparent_background(digits, tmp_path, ink):
    x = digits[1]
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = ink
    rgba[..., 3] = x  # the stroke is in the alpha channel; the colour under alpha 0 is ink's
    result = load_digit(save(rgba, tmp_path / "d.png"))
    expected = load_digit(save(x, tmp_path / "expected.png"))
    assert np.abs(result.astype(np.int16) - expected).max() <= 1


def test_rgba_with_opaque_background(digits, tmp_path):
    x = digits[2]
    rgba = np.full((28, 28, 4), 255, np.uint8)
    rgba[..., :3] = (255 - x)[..., None]  # black on an opaque white sheet
    result = load_digit(save(rgba, tmp_path / "d.png"))
    assert np.abs(result.astype(np.int16) - load_digit(save(x, tmp_path / "e.png"))).max() <= 1


def blank_png(path: Path) -> Path:
    return save(np.full((50, 40), 255, np.uint8), path)


def text_file(path: Path) -> Path:
    path.write_text("not an image\n")
    return path


def huge_truncated_png(path: Path) -> Path:
    """A PNG whose header says 5000x5000, cut short: refused by size, never decoded."""
    Image.new("1", (5000, 5000)).save(path)
    path.write_bytes(path.read_bytes()[:100])
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (blank_png, "no digit found: the image is blank"),
        (text_file, "cannot read image: not an image format Pillow knows"),
        (lambda path: path, "cannot read image: No such file or directory"),
        (huge_truncated_png, "image too large: 5000x5000"),
    ],
    ids=["blank", "text-file", "missing", "too-large"],
)
def test_bad_files_raise_data_error_naming_the_file(tmp_path, make, reason: str):
    path = make(tmp_path / "x.png")
    with pytest.raises(DataError) as caught:
        load_digit(path)
    assert str(caught.value).startswith(f"{path}: ") and reason in str(caught.value)
    assert caught.value.exit_code == 2


def test_load_digits_of_nothing_and_other_sizes(digits):
    assert load_digits([]).shape == (0, 28, 28)
    large = prepare_digit(digits[0], size=56)
    assert large.shape == (56, 56) and box_side(large) == 40
    assert np.abs(centre_of_mass(large) - 28).max() <= 0.5


def test_flattening_evens_a_lit_gradient_and_leaves_drawings_alone() -> None:
    from trainer.data.images import flatten_background

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 90, (28, 28)).astype(np.float64)  # a small, noisy image: as it is
    assert flatten_background(noisy) is noisy
    drawing = np.zeros((140, 140))
    drawing[30:110, 60:75] = 255  # the page's pad: an evenly black border
    assert flatten_background(drawing) is drawing
    xx = np.arange(300)[None, :] * np.ones((200, 1))
    paper = 240 - 0.5 * xx  # lit from the left: 240 down to 90
    photo = paper.copy()
    photo[50:150, 140:160] -= 60  # a dark bar, 60 levels under the paper around it
    flat = flatten_background(photo)
    background = np.ones_like(flat, dtype=bool)
    background[40:160, 130:170] = False
    assert np.ptp(flat[background]) < 8  # the gradient gone
    assert np.all(flat[60:140, 145:155] < 255 - 30)  # the bar kept (less the grain floor)
