"""Elastic distortions against a plain float64 reference: a hash written in Python integers,
a direct convolution, per-pixel bilinear interpolation; identity, backends, resume, config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from helpers import skip_if_numpys_step
from typer.testing import CliRunner

from trainer import backends
from trainer.cli.app import app
from trainer.core.config import Config
from trainer.core.elastic import ElasticWarp, epoch_key
from trainer.errors import ConfigError
from trainer.run.train import train

SHAPE = (9, 11)  # not square: rows and columns must not be mixed up
BG = -0.5


def mueller(v: int) -> int:
    """Thomas Mueller's 32-bit mixer on a Python integer."""
    for _ in range(2):
        v = ((v ^ (v >> 16)) * 0x45D9F3B) % 2**32
    return v ^ (v >> 16)


def reference_warp(image: np.ndarray, row: int, key: int, alpha: float, sigma: float,
                   rotate: float = 0.0, scale: float = 0.0) -> np.ndarray:
    """The warp of training row `row`, one pixel at a time in float64."""
    rows, cols = image.shape
    per_image = 2 * rows * cols + 2
    # each hash read as a signed 32-bit integer, over 2**31
    u = [(h - 2**32 if h >= 2**31 else h) / 2**31
         for h in (mueller((row * per_image + j + key) % 2**32) for j in range(per_image))]
    noise = np.array(u[:2 * rows * cols]).reshape(2, rows, cols)  # dy, then dx
    radius = int(4 * sigma + 0.5)
    w = {k: math.exp(-k * k / (2 * sigma * sigma)) for k in range(-radius, radius + 1)}
    total = sum(w.values())
    field = np.zeros((2, rows, cols))
    for f in range(2):  # direct convolution, zero outside the image
        for r in range(rows):
            for c in range(cols):
                field[f, r, c] = alpha * sum(
                    w[r - a] * w[c - b] / total**2 * noise[f, a, b]
                    for a in range(rows) for b in range(cols)
                    if abs(r - a) <= radius and abs(c - b) <= radius)
    theta, s = math.radians(rotate) * u[-2], 1 + scale * u[-1]
    cy, cx = (rows - 1) / 2, (cols - 1) / 2

    def pixel(r: int, c: int) -> float:
        return image[r, c] if 0 <= r < rows and 0 <= c < cols else BG

    out = np.empty((rows, cols))
    for r in range(rows):
        for c in range(cols):
            y, x = r - cy, c - cx
            sy = cy + s * (math.cos(theta) * y + math.sin(theta) * x) + field[0, r, c]
            sx = cx + s * (math.cos(theta) * x - math.sin(theta) * y) + field[1, r, c]
            r0, c0 = math.floor(sy), math.floor(sx)
            fy, fx = sy - r0, sx - c0
            out[r, c] = ((1 - fy) * ((1 - fx) * pixel(r0, c0) + fx * pixel(r0, c0 + 1))
                         + fy * ((1 - fx) * pixel(r0 + 1, c0) + fx * pixel(r0 + 1, c0 + 1)))
    return out


def make_warp(be: backends.Backend, dtype: str = "float64", hash_kernel=None, kernel=None,
              **options) -> ElasticWarp:
    settings = {"alpha": 6.0, "sigma": 1.5, "rotate": 0.0, "scale": 0.0} | options
    return ElasticWarp(be.xp, be.asarray, SHAPE, background=BG, seed=3,
                       dtype=getattr(be.xp, dtype), hash_kernel=hash_kernel, kernel=kernel,
                       **settings)


def warped(be: backends.Backend, warp: ElasticWarp, images: np.ndarray,
           rows: list[int]) -> np.ndarray:
    idx = np.array(rows, dtype=np.int64)
    x = be.asarray(np.ascontiguousarray(images[idx].reshape(len(rows), -1)))
    return np.asarray(be.to_numpy(warp(x, be.asarray(idx)))).reshape(len(rows), *SHAPE)


IMAGES = np.random.default_rng(1).random((20, *SHAPE))


@pytest.mark.parametrize("fast", [False, True], ids=["array-api", "numpy-kernel"])
@pytest.mark.parametrize("options", [{}, {"rotate": 20.0, "scale": 0.2},
                                     {"alpha": 30.0, "sigma": 1.0}], ids=str)
def test_warp_matches_the_float64_reference(options: dict, fast: bool) -> None:
    be = backends.load("numpy")
    kernels = be.kernels if fast else backends.Kernels()
    warp = make_warp(be, hash_kernel=kernels.hash32, kernel=kernels.elastic, **options)
    warp.use(epoch=2)
    rows = [7, 0, 19]
    got = warped(be, warp, IMAGES, rows)
    settings = {"alpha": 6.0, "sigma": 1.5} | options
    for i, row in enumerate(rows):
        want = reference_warp(IMAGES[row], row, epoch_key(3, 2), **settings)
        assert not np.allclose(want, IMAGES[row], atol=0.05)  # it does move the pixels
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12)


def test_the_backend_hash_kernel_draws_the_same_fields() -> None:
    be = backends.load("numpy")
    assert be.kernels.hash32 is not None
    for dtype in ("float32", "float64"):
        plain, fast = make_warp(be, dtype), make_warp(be, dtype, hash_kernel=be.kernels.hash32)
        plain.use(1)
        fast.use(1)
        images = IMAGES.astype(dtype)
        np.testing.assert_array_equal(warped(be, fast, images, [4, 5]),
                                      warped(be, plain, images, [4, 5]))


@pytest.mark.parametrize("options", [{}, {"rotate": 20.0, "scale": 0.2}], ids=str)
def test_the_numpy_kernel_warps_with_the_same_bits(options: dict) -> None:
    """backends/numpy_elastic.py runs the array-API warp's operations into buffers it keeps:
    the same bits for every batch size and dtype, however its buffers were used before."""
    be = backends.load("numpy")
    assert be.kernels.elastic is not None
    for dtype in ("float32", "float64"):
        plain = make_warp(be, dtype, hash_kernel=be.kernels.hash32, **options)
        fast = make_warp(be, dtype, hash_kernel=be.kernels.hash32, kernel=be.kernels.elastic,
                         **options)
        images = IMAGES.astype(dtype)
        for epoch, rows in ((1, [4, 5, 11]), (1, [0]), (2, [4, 5, 11]), (2, list(range(20)))):
            plain.use(epoch)
            fast.use(epoch)
            got = warped(be, fast, images, rows)
            np.testing.assert_array_equal(got, warped(be, plain, images, rows))
            assert not np.allclose(got, images[rows], atol=0.05)


def test_a_zero_field_is_the_identity(backend: backends.Backend) -> None:
    for dtype in ("float32", "float64"):
        warp = make_warp(backend, dtype, alpha=0.0)
        warp.use(1)
        images = IMAGES.astype(dtype)
        np.testing.assert_array_equal(warped(backend, warp, images, [3, 1, 2]), images[[3, 1, 2]])


def test_each_image_has_its_own_field_per_epoch() -> None:
    be = backends.load("numpy")
    warp = make_warp(be)
    same = np.repeat(IMAGES[:1], 20, axis=0)  # one picture at every row
    warp.use(1)
    first = warped(be, warp, same, [2, 5])
    assert not np.allclose(first[0], first[1])  # other rows, other fields
    # a row's warp does not depend on the batch it comes in
    np.testing.assert_array_equal(warped(be, warp, same, [5])[0], first[1])
    warp.use(2)
    assert not np.allclose(warped(be, warp, same, [2])[0], first[0])  # another epoch


def test_displacements_have_the_size_simard_describes() -> None:
    """At alpha 34, sigma 4 an interior pixel moves by alpha * sqrt(1/3) * sum(w^2) in each
    direction (uniform noise has variance 1/3; the 2-D kernel is w(a) w(b)): about 1.4 px."""
    be = backends.load("numpy")
    warp = ElasticWarp(be.xp, be.asarray, (28, 28), alpha=34.0, sigma=4.0, rotate=0.0,
                       scale=0.0, background=0.0, seed=0, dtype=be.xp.float64)
    warp.use(1)
    src_r, src_c = warp.sources(np.arange(4000, dtype=np.int64), np.float64, epoch_key(0, 1))
    dy = src_r[14, :, 14] - (14 + 1)  # (rows, images, cols); +1: the padded image's frame
    dx = src_c[14, :, 14] - (14 + 1)
    k = np.arange(-16, 17)
    w = np.exp(-k**2 / 32.0)
    w /= w.sum()
    expected = 34.0 * math.sqrt(1 / 3) * np.sum(w**2)
    assert expected == pytest.approx(1.38, abs=0.01)
    for d in (dy, dx):
        assert abs(d.mean()) < 0.1
        assert d.std() == pytest.approx(expected, rel=0.05)


def test_backends_warp_alike(other_backend: backends.Backend) -> None:
    skip_if_numpys_step(other_backend, elastic_config())  # numba warps with numpy's own code
    ref_be = backends.load("numpy")
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-4)):
        ref, other = (make_warp(b, dtype, rotate=10.0, scale=0.1) for b in (ref_be, other_backend))
        ref.use(4)
        other.use(4)
        images = IMAGES.astype(dtype)
        np.testing.assert_allclose(warped(other_backend, other, images, [9, 3, 14]),
                                   warped(ref_be, ref, images, [9, 3, 14]), rtol=tol, atol=tol)


ELASTIC = {"elastic_alpha": 4.0, "elastic_sigma": 1.5, "rotate": 8.0, "scale": 0.1}


def elastic_config(**changes) -> Config:
    return Config.from_dict({
        "layers": [{"nodes": 36, "activation": "relu", "dropout": 0.1},
                   {"nodes": 16, "activation": "softmax"}, {"nodes": 4}],
        "learning_rate": 0.01, "momentum": 0.9, "batch_size": 16, "epochs": 2,
        "dtype": "float64", "augment": {"shift": 1} | ELASTIC, "validation_split": 0.1}
        | changes)


def test_training_with_elastic_is_the_same_on_every_backend(
        other_backend: backends.Backend) -> None:
    data = make_dataset(n_train=200, shape=(6, 6), classes=4)
    cfg = elastic_config()
    skip_if_numpys_step(other_backend, cfg)
    ref, got = train(cfg, data, "numpy"), train(cfg, data, other_backend)
    plain = train(cfg.replace(augment={"shift": 1}), data, "numpy")
    assert not np.allclose(plain.params[0], ref.params[0])  # the warp was on
    for r, g in zip(ref.params, got.params, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("changes", "message"), [
    ({"elastic_alpha": -1.0}, "augment.elastic_alpha must be greater than or equal to 0, got -1"),
    ({"elastic_alpha": 500}, "augment.elastic_alpha must be less than or equal to 100"),
    ({"elastic_alpha": "34"}, "augment.elastic_alpha must be a valid number"),
    ({"elastic_sigma": 0.0}, "augment.elastic_sigma must be greater than or equal to 1"),
    ({"elastic_sigma": float("inf")}, "augment.elastic_sigma must be a finite number"),
    ({"rotate": 90}, "augment.rotate must be less than or equal to 30"),
    ({"scale": -0.1}, "augment.scale must be greater than or equal to 0"),
])
def test_bad_elastic_settings_are_refused(changes: dict, message: str,
                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        elastic_config(augment=changes)
    path = tmp_path / "elastic.json"
    data = elastic_config().to_dict() | {"augment": changes}
    path.write_text(json.dumps(data, allow_nan=True))
    result = CliRunner().invoke(app, ["train", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "elastic.json" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
