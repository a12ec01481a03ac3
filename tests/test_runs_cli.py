"""`trainer runs [DIR]` and `trainer runs compare`: states told from what a run directory holds,
tables that fit 80 columns, figures read back from the runs' files, bad input exiting 2."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import make_dataset, write_data_folder
from helpers import run

from trainer.cli.console import console
from trainer.core.config import default_config
from trainer.run.rundir import hold_run


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/ with a finished run (lr 0.01), another (lr 0.05, 2 epochs), an interrupted one
    (stopped after its first epoch), a diverged one, and a group of 2 configs x 2 seeds.
    Tests read it; one that changes a run copies it first."""
    root = tmp_path_factory.mktemp("work")
    idx_dir = write_data_folder(root / "idx", make_dataset(n_train=600, n_test=200,
                                                           shape=(28, 28), classes=10, seed=3))
    runs = root / "runs"
    base = default_config().to_dict() | {"epochs": 1, "batch_size": 16}
    configs = {"slow": base, "fast": base | {"learning_rate": 0.05, "epochs": 2},
               "hot": base | {"learning_rate": 1e9}, "long": base | {"epochs": 3},
               "b": base | {"layers": [{"nodes": 784, "activation": "Sigmoid"},
                                       {"nodes": 32, "activation": "Softmax"}, {"nodes": 10}]}}
    for name, cfg in configs.items():
        (root / f"{name}.json").write_text(json.dumps(cfg))
    for name in ("slow", "fast"):
        assert run("train", root / f"{name}.json", "--data-dir", idx_dir, "--run-dir",
                   runs / name, "-q").exit_code == 0
    assert run("train", root / "hot.json", "--data-dir", idx_dir, "--run-dir", runs / "hot",
               "-q").exit_code == 1
    assert run("train", root / "slow.json", root / "b.json", "--seeds", "2", "--data-dir",
               idx_dir, "--run-dir", runs / "grp", "-q").exit_code == 0
    _interrupted(root / "long.json", runs / "long", idx_dir)
    return runs


def _interrupted(config: Path, path: Path, idx_dir: Path) -> None:
    """A run stopped by SIGINT after its first epoch: a checkpoint, no metrics."""
    import os
    import signal

    import trainer.cli.train

    real = trainer.cli.train.train

    def stop_after_an_epoch(*args, **kwargs):
        on_epoch = kwargs["callbacks"].on_epoch
        kwargs["callbacks"].on_epoch = lambda s: (on_epoch(s), os.kill(os.getpid(),
                                                                         signal.SIGINT))
        return real(*args, **kwargs)

    trainer.cli.train.train = stop_after_an_epoch
    try:
        assert run("train", config, "--data-dir", idx_dir, "--run-dir", path,
                   "-q").exit_code == 130
    finally:
        trainer.cli.train.train = real


@pytest.fixture
def narrow_console():
    """The CLI's console at a width, given by the test (rich reads COLUMNS only at start)."""
    saved = console._width

    def set_width(width: int) -> None:
        console.width = width

    yield set_width
    console._width = saved


def test_the_table_tells_each_state_from_the_run_directory(runs_dir: Path,
                                                          tmp_path: Path) -> None:
    result = run("runs", runs_dir, "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {n: r["state"] for n, r in rows.items() if r["kind"] == "run"} == {
        "slow": "finished", "fast": "finished", "hot": "diverged", "long": "interrupted"}
    for name in ("slow", "fast"):  # the figures are the run's own
        metrics = json.loads((runs_dir / name / "metrics.json").read_text())
        assert rows[name]["test_accuracy"] == metrics["test_accuracy"]
        assert rows[name]["seconds"] == metrics["total_seconds"]
        assert rows[name]["backend"] == "numpy" and rows[name]["network"] == "784-128-10"
    assert (rows["fast"]["epochs"], rows["fast"]["epochs_done"]) == (2, 2)
    assert (rows["long"]["epochs"], rows["long"]["epochs_done"]) == (3, 1)
    group = rows["grp/"]
    assert group["kind"] == "group" and group["state"] == "finished"
    configs = {r["name"]: r for r in group["configs"]}
    tested = [json.loads((runs_dir / "grp" / f"b-seed{s}" / "metrics.json").read_text())
              ["test_accuracy"] for s in (0, 1)]
    assert configs["b"]["test_accuracy"] == pytest.approx(sum(tested) / 2)
    assert configs["b"]["runs"] == 2 and configs["b"]["network"] == "784-32-10"
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    with hold_run(copy / "long"):  # a process training it holds its lock
        rows = {r["name"]: r for r in json.loads(run("runs", copy, "--json").stdout)}
        assert rows["long"]["state"] == "running"
    assert {r["name"]: r for r in json.loads(run("runs", copy, "--json").stdout)}[
        "long"]["state"] == "interrupted"  # the lock went with the process
    (copy / "grp" / "b-seed1" / "metrics.json").unlink()  # as if killed before the end
    group = next(r for r in json.loads(run("runs", copy, "--json").stdout)
                 if r["name"] == "grp/")
    assert group["state"] == "interrupted"
    assert next(r for r in group["configs"] if r["name"] == "b")["state"] == "interrupted"
    (copy / "fast" / "metrics.json").write_text("{not json")
    rows = {r["name"]: r for r in json.loads(run("runs", copy, "--json").stdout)}
    assert rows["fast"]["state"] == "damaged"  # listed, not fatal to the table
    result = run("runs", "compare", copy / "slow", copy / "fast")
    assert result.exit_code == 2 and "metrics.json: not valid JSON" in " ".join(
        result.output.split())


def test_the_table_fits_80_columns_and_narrower(runs_dir: Path, narrow_console) -> None:
    for width in (80, 60, 40):
        narrow_console(width)
        result = run("runs", runs_dir)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= width, (width, result.output)
        text = result.output
        for word in ("slow", "fast", "hot", "long", "grp/", "finished", "interrupted",
                     "diverged"):
            assert word in text, (width, word)
    narrow_console(80)
    lines = run("runs", runs_dir).output.splitlines()
    assert lines[0].split() == ["id", "date", "name", "network", "epochs", "test", "%",
                                "time", "state"]  # the backend from 90 columns on
    slow = json.loads((runs_dir / "slow" / "metrics.json").read_text())
    row = next(line for line in lines if " slow " in line)
    assert f"{100 * slow['test_accuracy']:.2f}" in row and "784-128-10" in row
    assert re.search(r"\s1/3\s.*interrupted", next(x for x in lines if " long " in x))


def test_sort_orders_the_rows(runs_dir: Path) -> None:
    rows = json.loads(run("runs", runs_dir, "--sort", "test", "--json").stdout)
    runs = [r for r in rows if r["kind"] == "run" and r["test_accuracy"] is not None]
    assert [r["test_accuracy"] for r in runs] == sorted((r["test_accuracy"] for r in runs),
                                                       reverse=True)
    names = [r["name"] for r in json.loads(run("runs", runs_dir, "--sort", "name",
                                               "--reverse", "--json").stdout)]
    assert names == sorted(names, reverse=True)
    group = [r["name"] for r in json.loads(run("runs", runs_dir / "grp", "--json").stdout)]
    assert group == ["slow-seed0", "slow-seed1", "b-seed0", "b-seed1"]  # in the order trained


def test_compare_shows_the_differences_side_by_side(runs_dir: Path) -> None:
    result = run("runs", "compare", runs_dir / "slow", runs_dir / "fast")
    assert result.exit_code == 0, result.output
    out = result.output
    differ = out[out.index("Config keys that differ"):out.index("Metrics")]
    assert re.search(r"learning_rate\s+0\.01\s+0\.05", differ)
    assert re.search(r"epochs\s+1\s+2", differ)
    assert "momentum" not in differ and "batch_size" not in differ
    slow = json.loads((runs_dir / "slow" / "metrics.json").read_text())
    fast = json.loads((runs_dir / "fast" / "metrics.json").read_text())
    assert re.search(rf"test_accuracy\s+{100 * slow['test_accuracy']:.2f}%\s+"
                     rf"{100 * fast['test_accuracy']:.2f}%", out)
    f1 = out[out.index("Per-class F1"):]
    for c in ("0", "7"):
        assert re.search(rf"\n\s*{c}\s+{100 * slow['per_class'][c]['f1']:.2f}\s+"
                         rf"{100 * fast['per_class'][c]['f1']:.2f}", f1)
    svg, = (runs_dir / "compare").glob("*/compare.svg")  # a folder of its own
    assert f"Histories overlaid: {svg}" in " ".join(out.split())
    text = svg.read_text()
    assert 'id="acc-slow-0"' in text and 'id="loss-fast-0"' in text
    data = json.loads(run("runs", "compare", runs_dir / "slow", runs_dir / "grp" / "b-seed1",
                          "--out", runs_dir.parent / "x.svg", "--json").stdout)
    assert ["layers[1].nodes", [128, 32]] in data["config_differences"]
    assert ["seed", [0, 1]] in data["config_differences"]
    assert (runs_dir.parent / "x.svg").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["runs", "compare", "{runs}/slow", "{runs}/grp"], "grp is not a run directory"),
    (["runs", "compare", "{runs}/slow", "{runs}/nowhere"], "nowhere is not a run directory"),
    (["runs", "compare", "{runs}/slow"], "at least two runs"),
    (["runs", "--sort", "speed", "{runs}"], "unknown sort key 'speed'"),
    (["runs", "{runs}/nowhere"], "nowhere is not a folder of runs"),
])
def test_bad_input_is_one_message_and_exit_2(runs_dir: Path, args: list[str],
                                             message: str) -> None:
    result = run(*[a.format(runs=runs_dir) for a in args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_an_empty_folder_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    result = run("runs")
    assert result.exit_code == 0 and "No runs in runs" in result.output
    (tmp_path / "runs").rmdir()  # not made yet: nothing to list, which is no error
    assert run("runs").exit_code == 0 and run("runs", "--json").stdout.strip() == "[]"
    assert run("runs", "runs").exit_code == 2  # but a DIR given is one that must exist


def test_a_model_that_cannot_be_read_is_damaged_not_finished(runs_dir: Path,
                                                             tmp_path: Path) -> None:
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    (copy / "slow" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    (copy / "fast" / "model.safetensors").write_bytes(b"not a model at all")
    rows = {r["name"]: r for r in json.loads(run("runs", copy, "--json").stdout)}
    assert rows["slow"]["state"] == rows["fast"]["state"] == "damaged"
    assert rows["hot"]["state"] == "diverged" and rows["grp/"]["state"] == "finished"


HOSTILE = "\x1b[2J\x1b]0;pwned\x1b\\"  # clear the screen, set the window title


def _hostile_runs(runs_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two runs with escape codes in a folder name, metrics.json's backend and config.json's
    optimizer (as a hostile or broken tool could write them)."""
    root = tmp_path / "runs"
    one, two = root / "esc\x1b[31mred", root / "plain"
    shutil.copytree(runs_dir / "slow", one)
    shutil.copytree(runs_dir / "fast", two)
    metrics = json.loads((one / "metrics.json").read_text())
    (one / "metrics.json").write_text(json.dumps(metrics | {"backend": HOSTILE}))
    config = json.loads((two / "config.json").read_text())
    (two / "config.json").write_text(json.dumps(config | {"optimizer": "\x1b[31msgd"}))
    return root, one, two


def test_escape_codes_from_run_files_are_shown_never_sent(runs_dir: Path,
                                                          tmp_path: Path) -> None:
    """Through a pipe: the folder name, the backend and the config value come out as text
    (`\\x1b`), with no ESC byte and no matplotlib warning about a missing glyph."""
    import subprocess
    import sys

    root, one, two = _hostile_runs(runs_dir, tmp_path)
    for args in (["runs", root], ["runs", "compare", one, two, "--out", tmp_path / "c.svg"]):
        done = subprocess.run([sys.executable, "-m", "trainer", *map(str, args)],
                              capture_output=True, text=True, timeout=120,
                              env=os.environ | {"COLUMNS": "200"})
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout + done.stderr and "Glyph" not in done.stderr
        assert "esc\\x1b[31mred" in done.stdout
        if args[1] == "compare":
            assert "\\x1b[31msgd" in done.stdout and "\x1b" not in (tmp_path / "c.svg").read_text()
        else:
            assert "\\x1b[2J" in done.stdout


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_escape_codes_from_run_files_do_not_reach_a_terminal(runs_dir: Path,
                                                             tmp_path: Path) -> None:
    """Through a pty rich colours its own output; the escape sequences from the files still
    arrive as text: no clear-screen, no window title, no red from a folder name."""
    import subprocess
    import sys

    root, one, two = _hostile_runs(runs_dir, tmp_path)
    for args in (["runs", root], ["runs", "compare", one, two, "--out", tmp_path / "c.svg"]):
        main, child = os.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "trainer", *map(str, args)],
                                stdin=child, stdout=child, stderr=child,
                                env=os.environ | {"COLUMNS": "200", "TERM": "xterm"})
        os.close(child)
        out = b""
        with contextlib.suppress(OSError):  # EIO once the child has closed its side
            while chunk := os.read(main, 65536):
                out += chunk
        os.close(main)
        assert proc.wait(timeout=120) == 0, out
        for sequence in (b"\x1b[2J", b"\x1b]0;", b"\x1b[31mred", b"\x1b[31msgd"):
            assert sequence not in out, (sequence, out)
        assert b"esc\\x1b[31mred" in out


def test_compare_lists_keys_that_only_a_later_run_has() -> None:
    """A key absent from the first run's config (a third layer, a schedule) still differs."""
    from trainer.run.catalog import RunInfo
    from trainer.run.compare import config_differences

    two = {"layers": [{"nodes": 4, "activation": "softmax"}, {"nodes": 2}], "epochs": 1}
    three = {"layers": [{"nodes": 4, "activation": "relu"}, {"nodes": 3, "activation": "softmax"},
                        {"nodes": 2}], "epochs": 1, "lr_schedule": {"type": "cosine"}}
    runs = [RunInfo(Path(n), n, 0.0, c, "finished") for n, c in (("a", two), ("b", three))]
    differ = dict(config_differences(runs))
    assert differ["layers[2].nodes"] == [None, 2]
    assert differ["lr_schedule.type"] == [None, "cosine"]
    assert differ["layers[1].nodes"] == [2, 3] and "epochs" not in differ
    assert dict(config_differences(runs[::-1]))["lr_schedule.type"] == ["cosine", None]
