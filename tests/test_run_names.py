"""Runs you can name: `trainer runs` shows each run's id, and every command that takes a run
(evaluate, predict, export, serve, runs compare, train --resume) takes that id, `latest` or a
directory, through one resolver; two runs with the same name stay two runs."""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from trainer.cli.app import app
from trainer.cli.console import console
from trainer.errors import UsageError
from trainer.run.catalog import resolve_run, run_id

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder whose runs/ holds two runs both named `default` (the second newer)."""
    from conftest import make_dataset, write_data_folder

    root = tmp_path_factory.mktemp("names")
    idx = write_data_folder(root / "idx", make_dataset(n_train=300, n_test=100,
                                                       shape=(28, 28), classes=10, seed=5))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for n in range(2):
            if n:  # the next second: runs/<time>-default twice (in one second: -default-2)
                time.sleep(1.0 - time.time() % 1.0 + 0.01)
            result = run("train", "--epochs", "1", "--data-dir", idx, "-q")
            assert result.exit_code == 0, result.output
        first, second = sorted((root / "runs").iterdir())
        os.utime(first / "config.json", (time.time() - 60, time.time() - 60))
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def in_work(work: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.chdir(work)
    first, second = sorted(p for p in Path("runs").iterdir() if p.name != "compare")
    return first, second


def test_the_table_shows_each_runs_id_and_every_command_takes_it(in_work, work: Path,
                                                                 tmp_path: Path) -> None:
    first, second = in_work
    rows = json.loads(run("runs", "--json").stdout)
    assert {r["id"]: r["path"] for r in rows} == {run_id(first): str(first),
                                                  run_id(second): str(second)}
    saved = console._width
    console.width = 80
    try:
        table = run("runs").output
    finally:
        console._width = saved
    assert all(len(line) <= 80 for line in table.splitlines())
    for path in (first, second):
        assert next(line for line in table.splitlines() if run_id(path) in line).split()[
            3] == "default"  # id, date (2 words), name
    one = run_id(first)
    evaluated = json.loads(run("evaluate", one, "--data-dir", work / "idx", "--json").stdout)
    assert evaluated["run_dir"] == str(first)
    assert json.loads(run("evaluate", "latest", "--data-dir", work / "idx", "--json").stdout
                      )["run_dir"] == str(second)
    assert json.loads(run("evaluate", one[:3], "--data-dir", work / "idx", "--json").stdout
                      )["run_dir"] == str(first)  # a prefix will do
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # a 1
    Image.fromarray(digit).save(tmp_path / "one.png")
    predicted = run("predict", one, tmp_path / "one.png", "--json")
    assert predicted.exit_code == 0, predicted.output
    resumed = run("train", "--resume", "latest", "--data-dir", work / "idx")
    assert resumed.exit_code == 0 and "finished" in resumed.output
    assert str(second) in " ".join(resumed.output.split())
    pytest.importorskip("onnx")
    try:
        importlib.metadata.version("trainer")  # the ONNX file's producer_version
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("trainer is not installed here (CI installs it)")
    exported = run("export", one, "--out", tmp_path / "m.onnx")
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "m.onnx").is_file()


def test_compare_draws_two_runs_of_the_same_name(in_work) -> None:
    first, second = in_work
    result = run("runs", "compare", run_id(first), "latest", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["labels"] == [first.name, second.name]  # their directories, told apart
    svg = Path(data["svg"])
    assert svg.parent.parent == Path("runs/compare").resolve() and svg.name == "compare.svg"
    text = svg.read_text()
    for label in data["labels"]:
        assert f'id="acc-{label}-0"' in text and f'id="loss-{label}-0"' in text
    again = json.loads(run("runs", "compare", first, second, "--json").stdout)
    assert Path(again["svg"]) != svg and svg.is_file()  # the first one is still there


def test_labels_tell_same_named_folders_apart() -> None:
    from trainer.cli.runs import run_labels

    paths = [Path("/r/a/default"), Path("/r/b/default"), Path("/r/c/other"),
             Path("/r/a/default")]
    assert run_labels(paths) == ["a/default #1", "b/default", "other", "a/default #2"]


def test_a_name_that_is_no_run_is_one_message(in_work, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    for args in (["evaluate", "zzzz"], ["predict", "abcdef", "x.png"], ["serve", "latest2"],
                 ["export", "fff0ff"], ["runs", "compare", "latest", "nope"],
                 ["train", "--resume", "nope"]):
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "is not a run directory, nor a run's id" in " ".join(result.output.split())
    import trainer.run.catalog

    monkeypatch.setattr(trainer.run.catalog, "run_id", lambda path: "abc" + str(path)[-3:])
    with pytest.raises(UsageError, match="ids of 2 runs .* give more digits"):
        resolve_run("abc")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="no runs under runs/ yet"):
        resolve_run("latest")
