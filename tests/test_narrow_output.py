"""Output at 80 columns: the sweep's live table, the Ctrl-C notice, the bench's table and
legend, and `--help`, each rendered on a fixed 80-column console: no line wider, no figure or
word broken in the middle."""

from __future__ import annotations

import datetime
import io
import os
import re
import signal
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from trainer.cli.app import app

WIDTH = 80


def rendered(thing: object, width: int = WIDTH) -> list[str]:
    out = Console(file=io.StringIO(), width=width, color_system=None)
    out.print(thing)
    return out.file.getvalue().splitlines()


def _trials() -> list:
    optuna = pytest.importorskip("optuna")
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    dists = {"learning_rate": FloatDistribution(0.001, 0.1, log=True),
             "momentum": FloatDistribution(0.3, 0.95), "batch_size": IntDistribution(16, 256),
             "layers[1].nodes": IntDistribution(16, 512)}
    start = datetime.datetime(2026, 1, 1)
    trials = []
    for i, (state, value) in enumerate([(TrialState.COMPLETE, 0.9220),
                                        (TrialState.PRUNED, None),
                                        (TrialState.COMPLETE, 0.9715), (TrialState.FAIL, None)]):
        t = create_trial(state=state, value=value, distributions=dists,
                         params={"learning_rate": 0.012345, "momentum": 0.5123,
                                 "batch_size": 128, "layers[1].nodes": 384},
                         intermediate_values={} if state == TrialState.FAIL else
                         {0: 0.9, 1: 0.92},
                         user_attrs={"baseline": True} if i == 0 else {})
        t.number, t.datetime_start = i, start
        t.datetime_complete = start + datetime.timedelta(seconds=12.3)
        trials.append(t)
    assert optuna
    return trials


def test_the_sweep_table_breaks_names_between_parts_never_figures(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.cli import sweep

    monkeypatch.setattr(sweep, "console", Console(width=WIDTH))
    table = sweep.TrialTable(["learning_rate", "momentum", "batch_size", "layers[1].nodes"], 2,
                             live=False, silent=True)
    table.trials = _trials()
    lines = rendered(table.__rich__())
    assert all(len(line) <= WIDTH for line in lines), lines
    text = "\n".join(lines)
    for whole in ("COMPLETE", "PRUNED", "FAIL", "92.20%", "97.15%", "0.01235", "0.5123", "2/2",
                  "12.3", "learning_", "layers[1].", "nodes", "momentum", "the config"):
        assert re.search(rf"(^|\s){re.escape(whole)}(\s|$)", text, re.M), (whole, text)
    row = next(line for line in lines if "92.20%" in line).split()
    assert row[:5] == ["0", "COMPLETE", "92.20%", "2/2", "12.3"]
    assert "…" not in text


def test_the_ctrl_c_notice_is_one_line_between_the_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.cli import train
    from trainer.cli.display import TrainProgress
    from trainer.run.results import StepInfo

    out = Console(file=io.StringIO(), width=WIDTH, force_terminal=True, color_system=None)
    with TrainProgress(out, epochs=3, live=True) as progress, \
            train.stop_on_signals() as stop_requested:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop_requested() == signal.SIGINT
        # not printed from the handler, in the middle of the bars' drawing...
        assert "SIGINT" not in out.file.getvalue()
        sums = SimpleNamespace(values=lambda: (16.0, 29))
        progress.on_step(StepInfo(epoch=1, step=1, steps=10, seen=32, sums=sums))
    text = out.file.getvalue()
    # ...but between two steps, once, whole, within 80 columns
    line = next(x for x in re.split(r"[\r\n]", text) if "SIGINT" in x)
    assert re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).strip() == (
        "SIGINT: stopping after this step, with a checkpoint (again: stop now)")
    assert text.count("SIGINT") == 1
    assert len("SIGTERM: stopping after this step, with a checkpoint (again: stop now)") <= 80


def test_the_ctrl_c_notice_without_bars_survives_a_half_imported_module(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """CI once saw `trainer train -q` die on SIGTERM: the signal landed while rich imported its
    emoji table for the first epoch line, and the handler's notice, printed through rich, needed
    that half-initialized module (ImportError, exit 1, no checkpoint). The handler's notice must
    not depend on any such module: here rich's emoji table is a module with nothing in it yet."""
    import sys
    import types

    from trainer.cli import train

    monkeypatch.setitem(sys.modules, "rich._emoji_codes", types.ModuleType("rich._emoji_codes"))
    with train.stop_on_signals() as stop_requested:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_requested() == signal.SIGTERM
    err = capfd.readouterr().err
    assert err.strip() == "SIGTERM: stopping after this step, with a checkpoint (again: stop now)"


def test_the_bench_table_and_its_legend_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.cli.bench import LEGEND, bench_table, summary

    table = bench_table("s/epoch, median of 3 x 3 after 1 warm-up", "numpy")
    table.add_row("4096", "peer: JAX `lax.scan` epoch", "0.191", "12.34", "315", "1637", "-",
                  "1.12", "not finite")
    table.add_row("32", "numba", "0.343", "1.02", "175", "402", "2", "0.81", "0.0512")
    lines = rendered(table)
    assert all(len(line) <= WIDTH for line in lines) and not any("…" in ln for ln in lines)
    assert lines[2].split() == ["batch", "target", "s/epoch", "1st", "s", "kimg/s", "MB", "thr",
                                "÷numpy", "loss"]
    assert "0.343" in lines[-2] and "not finite" in "\n".join(lines)
    assert len(LEGEND) <= WIDTH
    report = {"machine": {"cpu": {"model": "x", "cores": 2, "simd": "AVX2"}},
              "versions": {"numpy": "2"}, "fastest": {32: "numba", 128: "numba", 512: "numpy"},
              "results": [{"batch_size": b, "target": t, "seconds": s} for b, t, s in (
                  (32, "numba", 0.343), (128, "numba", 0.258), (512, "numpy", 0.185))]}
    assert summary(report)[-1] == ("Fastest of ours here: numba at batch 32 (0.343 s), "
                                   "128 (0.258 s); numpy at batch 512 (0.185 s)")


@pytest.mark.parametrize("command", [[], ["train"], ["runs", "list"], ["runs", "compare"],
                                     ["sweep"], ["bench"], ["evaluate"], ["predict"],
                                     ["serve"], ["export"], ["backends"], ["data", "info"]])
def test_help_shows_flags_without_a_type_and_fits(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert all(len(line) <= WIDTH for line in result.output.splitlines())
    assert "--help" in result.output


def test_a_long_group_name_keeps_its_slash_at_80_columns() -> None:
    from trainer.cli.runs import runs_table

    group = {"kind": "group", "path": "runs/g", "name": "default+hidden-64/", "started": 0.0,
             "network": "", "backend": "numpy", "epochs": 30, "test_accuracy": 0.9806,
             "seconds": 1234.0, "state": "finished",
             "configs": [{"kind": "config", "name": "hidden-64", "runs": 3, "started": 0.0,
                          "network": "784-64-10", "backend": "numpy", "epochs": 60,
                          "test_accuracy": 0.9714, "seconds": 28.0, "state": "finished"}]}
    run = {"kind": "run", "path": "runs/20261204-224628-default", "name": "default",
           "started": 0.0, "network": "784-128-10", "backend": "numpy", "epochs": 30,
           "epochs_done": 30, "test_accuracy": 0.9806, "seconds": 20.1, "state": "interrupted"}
    lines = rendered(runs_table([run, group], WIDTH))
    assert all(len(line) <= WIDTH for line in lines), lines
    assert any("default+hidden-64/" in line for line in lines), lines  # on one line
    assert any("hidden-64 x3" in line for line in lines), lines
