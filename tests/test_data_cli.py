"""`trainer data fetch` and `trainer data info`, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_dataset, write_data_folder
from helpers import isolate
from typer.testing import CliRunner

from trainer.cli.data import data_app
from trainer.data.fetch import write_manifest

runner = CliRunner()
SMALL = make_dataset(n_train=30, n_test=12, shape=(4, 5), classes=4)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch) -> list[Path]:
    """A private cache, no data dir, and a fake fetch that records where it was asked to write."""
    isolate(monkeypatch, tmp_path)
    fetched: list[Path] = []

    def fake_fetch(dataset: object, dest: Path, progress: object = None) -> str:
        fetched.append(dest)
        write_data_folder(dest, SMALL, gz=True)
        write_manifest(dest, "fake source")
        return "fake source"

    monkeypatch.setattr("trainer.cli.data.fetch_dataset", fake_fetch)
    monkeypatch.setattr("trainer.data.dataset.fetch_dataset", fake_fetch)
    return fetched


def test_truncated_file_exits_2_naming_it(tmp_path: Path) -> None:
    folder = write_data_folder(tmp_path / "d", SMALL)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    result = runner.invoke(data_app, ["info", "--data-dir", str(folder)])
    assert result.exit_code == 2
    assert str(path) in result.output and "truncated" in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_info_on_a_user_folder(tmp_path: Path) -> None:
    folder = write_data_folder(tmp_path / "d", SMALL)
    result = runner.invoke(data_app, ["info", "--data-dir", str(folder)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "data-dir" in out and str(folder) in out and "no manifest (user folder)" in out
    assert "30 images, 30 labels" in out and "12 images, 12 labels" in out and "4x5" in out
    assert "examples per class" in out


def test_fetch_then_info_then_fetch_again(isolated: list[Path]) -> None:
    first = runner.invoke(data_app, ["fetch", "--quiet"])
    assert first.exit_code == 0, first.output
    assert "Fetched MNIST from fake source" in first.output and len(isolated) == 1
    info = runner.invoke(data_app, ["info"])
    assert info.exit_code == 0, info.output
    assert "cache" in info.output and "manifest verified (fake source)" in info.output
    again = runner.invoke(data_app, ["fetch"])
    assert again.exit_code == 0 and "nothing downloaded" in again.output
    assert len(isolated) == 1
    forced = runner.invoke(data_app, ["fetch", "--force", "--quiet"])
    assert forced.exit_code == 0 and len(isolated) == 2


def test_tampered_cache_is_reported(isolated: list[Path]) -> None:
    runner.invoke(data_app, ["fetch", "--quiet"])
    victim = isolated[0] / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-1])
    for command in (["info"], ["fetch"]):
        result = runner.invoke(data_app, command)
        assert result.exit_code == 2
        assert "SHA-256 does not match" in result.output and "--force" in result.output


def test_info_without_data_says_how_to_get_it(isolated: list[Path]) -> None:
    result = runner.invoke(data_app, ["info"])
    assert result.exit_code == 2 and "trainer data fetch" in result.output
    assert isolated == []  # info never downloads
