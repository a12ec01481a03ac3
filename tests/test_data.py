"""Finding, loading and checking a dataset, and the input scaling the engine uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset, write_data_folder
from helpers import isolate
from typer.testing import CliRunner

from trainer.cli.app import app
from trainer.data.dataset import (
    InputScaling,
    cache_dir,
    class_counts,
    load_dataset,
    mnist_cache_dir,
    pixel_stats,
)
from trainer.data.fetch import write_manifest
from trainer.data.idx import write_idx
from trainer.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch) -> None:
    """No test sees the user's real cache or data dir, and none may download anything."""
    isolate(monkeypatch, tmp_path)

    def no_fetch(*args, **kwargs):
        raise AssertionError("tests must not fetch")

    monkeypatch.setattr("trainer.data.dataset.fetch_dataset", no_fetch)


SMALL = make_dataset(n_train=30, n_test=12, shape=(4, 5), classes=4)


@pytest.mark.parametrize("gz", [False, True])
def test_load_from_data_dir(tmp_path: Path, gz: bool) -> None:
    folder = write_data_folder(tmp_path / "d", SMALL, gz=gz)
    data = load_dataset(folder)
    assert (data.source, data.path) == ("data-dir", folder)
    assert data.hash_status == "no manifest (user folder)"
    assert data.train_images.shape == (30, 4, 5) and data.test_labels.shape == (12,)
    assert np.array_equal(data.train_images, SMALL.train_images)
    assert data.image_shape == (4, 5) and data.input_size == 20 and data.num_classes == 10


def test_env_var_then_explicit_dir(tmp_path: Path, monkeypatch) -> None:
    env_dir = write_data_folder(tmp_path / "env", SMALL)
    monkeypatch.setenv("TRAINER_DATA_DIR", str(env_dir))
    assert load_dataset().path == env_dir
    other = write_data_folder(tmp_path / "explicit", SMALL.limit(train=10))
    assert len(load_dataset(other).train_images) == 10


def test_missing_dir_and_missing_file(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match="no such data folder"):
        load_dataset(tmp_path / "nope")
    monkeypatch.setenv("TRAINER_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataError, match="TRAINER_DATA_DIR"):
        load_dataset()
    folder = write_data_folder(tmp_path / "d", SMALL)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=f"{folder}: missing t10k-labels-idx1-ubyte "):
        load_dataset(folder)



@pytest.mark.parametrize("how", ["option", "env"])
def test_unknown_user_in_data_dir_is_a_data_error(how: str, monkeypatch) -> None:
    folder = "~no-such-user-for-trainer-tests/mnist"
    if how == "env":
        monkeypatch.setenv("TRAINER_DATA_DIR", folder)
    with pytest.raises(DataError, match=r"cannot expand '~' \(no such user"):
        load_dataset(Path(folder) if how == "option" else None)
    option = ["--data-dir", folder] if how == "option" else []
    result = CliRunner().invoke(app, ["data", "info", *option])
    assert result.exit_code == 2 and "cannot expand '~'" in result.output
    assert "Traceback" not in result.output

def test_count_mismatch_names_the_labels_file(tmp_path: Path) -> None:
    folder = write_data_folder(tmp_path / "d", SMALL)
    write_idx(folder / "train-labels-idx1-ubyte", SMALL.train_labels[:-1])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: .*expected 30 labels, found 29"):
        load_dataset(folder)


def test_label_out_of_range_and_shape_mismatch(tmp_path: Path) -> None:
    folder = write_data_folder(tmp_path / "d", SMALL)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(12, 10, np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: label 0 is 10"):
        load_dataset(folder)
    write_data_folder(folder, SMALL)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((12, 5, 4), np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: .*expected \(4, 5\), found"):
        load_dataset(folder)


def test_cache_with_manifest_is_verified(tmp_path: Path) -> None:
    cache = write_data_folder(mnist_cache_dir(), SMALL, gz=True)
    assert cache == tmp_path / "xdg" / "trainer" / "mnist"
    write_manifest(cache, "test source")
    data = load_dataset(fetch=False)
    assert (data.source, data.hash_status) == ("cache", "manifest verified (test source)")
    write_idx(cache / "train-labels-idx1-ubyte.gz", SMALL.train_labels[::-1].copy())
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: SHA-256 does not match"):
        load_dataset()
    (cache / "manifest.json").write_text('{"source": "x", "files": {}}')
    with pytest.raises(DataError, match="does not list train-images-idx3-ubyte.gz, "):
        load_dataset()
    (cache / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: unreadable manifest"):
        load_dataset()


def test_empty_cache_without_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="trainer data fetch"):
        load_dataset(fetch=False)


def test_missing_data_is_fetched_into_the_cache(monkeypatch) -> None:
    def fake_fetch(dataset: object, dest: Path, progress: object = None) -> str:
        write_data_folder(dest, SMALL, gz=True)
        write_manifest(dest, "fake")
        return "fake"

    monkeypatch.setattr("trainer.data.dataset.fetch_dataset", fake_fetch)
    data = load_dataset()
    assert (data.source, data.path) == ("fetched: fake", mnist_cache_dir())
    assert load_dataset().source == "cache"


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch) -> None:
    assert cache_dir() == tmp_path / "xdg" / "trainer"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the spec says: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "trainer"


def test_limit_class_counts_and_pixel_stats() -> None:
    small = SMALL.limit(train=7, test=3)
    assert small.train_images.shape == (7, 4, 5) and len(small.test_labels) == 3
    assert class_counts(np.array([0, 2, 2], np.uint8), 4).tolist() == [1, 0, 2, 0]
    x = SMALL.train_images.astype(np.float64) / 255
    assert pixel_stats(SMALL.train_images) == pytest.approx((x.mean(), x.std()), rel=1e-12)


def test_standardize_uses_one_scalar_from_the_training_set() -> None:
    scaling = InputScaling.fit(SMALL.train_images)
    x = SMALL.train_images.reshape(30, 20).astype(np.float64) / 255
    assert scaling.method == "standardize"
    assert (scaling.mean, scaling.std) == pytest.approx((x.mean(), x.std()), rel=1e-12)
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        out = scaling.apply(SMALL.train_images, dtype=dtype)
        assert out.dtype == dtype and out.shape == (30, 20)
        np.testing.assert_allclose(out, (x - x.mean()) / x.std(), rtol=tol, atol=tol)


def test_unit_scaling_is_exactly_x_over_255() -> None:
    scaling = InputScaling.fit(SMALL.train_images, "unit")
    assert (scaling.mean, scaling.std) == (0.0, 1.0)
    expected = SMALL.test_images.reshape(12, 20).astype(np.float32) / np.float32(255)
    assert np.array_equal(scaling.apply(SMALL.test_images), expected)


def test_scaling_round_trips_through_json() -> None:
    scaling = InputScaling.fit(SMALL.train_images)
    again = InputScaling.from_dict(json.loads(json.dumps(scaling.to_dict())))
    assert again == scaling


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "standardize", "mean": 0.1},
        {"method": "standardize", "mean": 0.1, "std": 0.3, "extra": 1},
        {"method": "minmax", "mean": 0.0, "std": 1.0},
        {"method": "unit", "mean": 0.0, "std": 0.0},
        {"method": "unit", "mean": float("nan"), "std": 1.0},
        {"method": "unit", "mean": "0", "std": 1.0},
        {"method": "unit", "mean": True, "std": 1.0},
        ["method", "mean", "std"],
    ],
)
def test_bad_scaling_metadata_is_a_config_error(bad) -> None:
    with pytest.raises(ConfigError, match="input scaling"):
        InputScaling.from_dict(bad)


def test_scaling_refuses_what_it_cannot_use() -> None:
    with pytest.raises(DataError, match="std 0"):
        InputScaling.fit(np.full((3, 2, 2), 7, np.uint8))
    with pytest.raises(DataError, match="uint8"):
        InputScaling().apply(np.zeros((2, 4), np.float32))
