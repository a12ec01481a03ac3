"""A finished run drops its previous checkpoint (the latest stays: `--resume` reads it to say
the run is finished); `--keep-checkpoints` keeps both, for a single run and a batch."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_dataset, write_data_folder
from typer.testing import CliRunner

from trainer.cli.app import app
from trainer.run.checkpoint import LATEST, PREVIOUS


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_finished_run_keeps_only_its_latest_checkpoint(tmp_path: Path) -> None:
    idx = write_data_folder(tmp_path / "idx", make_dataset(n_train=200, n_test=50,
                                                           shape=(28, 28), classes=10))
    common = ["--epochs", 2, "--data-dir", idx, "-q"]
    assert run("train", *common, "--run-dir", tmp_path / "lean").exit_code == 0
    lean = tmp_path / "lean"
    assert (lean / LATEST).is_file() and not (lean / PREVIOUS).exists()
    resumed = run("train", "--resume", lean, "--data-dir", idx)
    assert resumed.exit_code == 0 and "is finished" in " ".join(resumed.output.split())
    rows = json.loads(run("runs", tmp_path, "--json").stdout)
    assert [r["state"] for r in rows if r["path"] == str(lean)] == ["finished"]
    assert run("train", *common, "--run-dir", tmp_path / "kept",
               "--keep-checkpoints").exit_code == 0
    assert (tmp_path / "kept" / LATEST).is_file() and (tmp_path / "kept" / PREVIOUS).is_file()
    for keep, group in ((["--keep-checkpoints"], "g-kept"), ([], "g-lean")):
        done = run("train", *common, "--seeds", 2, "--run-dir", tmp_path / group, *keep)
        assert done.exit_code == 0, done.output
        members = [p for p in (tmp_path / group).iterdir() if (p / "metrics.json").is_file()]
        assert len(members) == 2
        assert all((p / PREVIOUS).exists() == bool(keep) and (p / LATEST).is_file()
                   for p in members)
