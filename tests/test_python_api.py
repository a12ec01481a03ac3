"""The Python API: `trainer.train(..., run_dir=...)` writes the run directory `trainer train`
writes, `trainer.load_run` reads it back to predict and evaluate, `progress=True` shows the
bars and epoch lines."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset, write_data_folder
from rich.console import Console
from typer.testing import CliRunner

import trainer
from trainer.cli.app import app
from trainer.core.config import default_config


@pytest.fixture(scope="module")
def data():
    return make_dataset(n_train=300, n_test=100, shape=(28, 28), classes=10, seed=7)


def test_train_with_a_run_dir_writes_what_the_cli_writes(data, tmp_path: Path) -> None:
    cfg = default_config().replace(epochs=2, batch_size=16)
    result = trainer.train(cfg, data, run_dir=tmp_path / "py", name="notebook")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    idx = write_data_folder(tmp_path / "idx", data)
    cli = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.json"), "--data-dir", str(idx),
                                   "--run-dir", str(tmp_path / "cli"), "-q"])
    assert cli.exit_code == 0, cli.output
    assert sorted(p.name for p in (tmp_path / "py").iterdir()) == sorted(
        p.name for p in (tmp_path / "cli").iterdir())
    metrics = json.loads((tmp_path / "py" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == result.test_accuracy
    assert len(metrics["epochs"]) == 2
    rows = json.loads(CliRunner().invoke(app, ["runs", str(tmp_path), "--json"]).stdout)
    py = next(r for r in rows if r["path"] == str(tmp_path / "py"))
    assert (py["state"], py["name"]) == ("finished", "py")

    run = trainer.load_run(tmp_path / "py")
    report = run.evaluate(data)
    assert report.accuracy == pytest.approx(metrics["test_accuracy"])
    proba = run.predict_proba(data.test_images)
    assert proba.shape == (100, 10) and np.allclose(proba.sum(axis=1), 1)
    assert np.mean(proba.argmax(axis=1) == data.test_labels) == pytest.approx(report.accuracy)
    assert run.predict_proba(data.test_images[0]).shape == (10,)  # one image
    assert run.predict(data.test_images[:3]) == [str(int(i)) for i in proba[:3].argmax(axis=1)]
    assert trainer.load_run(run.path).path == run.path


def test_progress_shows_the_bars_and_a_line_per_epoch(data, monkeypatch) -> None:
    import trainer.cli.console

    out = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    monkeypatch.setattr(trainer.cli.console, "console", out)
    trainer.train(default_config().replace(epochs=2), data, progress=True)
    text = out.file.getvalue()
    assert "epoch   1/2" in text and "epoch   2/2" in text
    assert "epochs" in text and "━" in text  # the live bars
    quiet = Console(file=io.StringIO(), width=80)
    monkeypatch.setattr(trainer.cli.console, "console", quiet)
    trainer.train(default_config().replace(epochs=1), data)
    assert quiet.file.getvalue() == ""  # without progress=True: nothing printed
