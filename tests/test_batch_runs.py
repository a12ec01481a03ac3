"""`trainer train CONFIG... --seeds N`: a batch in a group directory, its summary read back and
recomputed, the same command again training nothing, an interrupted batch resuming exactly."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import run
from safetensors.numpy import load_file

import trainer.batch.run
from trainer.batch import parse_seeds
from trainer.core.config import default_config
from trainer.errors import UsageError
from trainer.run.checkpoint import LATEST, load_checkpoint

MEMBERS = ["a-seed0", "a-seed1", "b-seed0", "b-seed1"]


def write_configs(tmp_path: Path, epochs: int = 1) -> tuple[Path, Path]:
    """Two small configs: `a` (the default network) and `b` (32 hidden nodes)."""
    base = default_config().to_dict() | {"epochs": epochs, "batch_size": 16}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(base))
    b.write_text(json.dumps(base | {"layers": [{"nodes": 784, "activation": "Sigmoid"},
                                                {"nodes": 32, "activation": "Softmax"},
                                                {"nodes": 10}]}))
    return a, b


def snapshot(group: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of the group's runs: its mtime and bytes."""
    return {str(p.relative_to(group)): (p.stat().st_mtime_ns, p.read_bytes())
            for name in MEMBERS for p in sorted((group / name).iterdir())}


def test_parse_seeds() -> None:
    assert parse_seeds("5") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2,7") == [0, 2, 7]
    assert parse_seeds("7,") == [7]
    for bad in ("0", "x", "1,1", "-1,2", "1,,2", ","):
        with pytest.raises(UsageError):
            parse_seeds(bad)


def test_batch_writes_runs_and_a_summary_that_recomputes(mnist, tmp_path: Path) -> None:
    a, b = write_configs(tmp_path)
    group = tmp_path / "g"
    result = run("train", a, b, "--seeds", "2", "--limit-train", "1000", "--limit-test", "500",
                 "--run-dir", group, "-q")
    assert result.exit_code == 0, result.output
    assert {p.name for p in group.iterdir()} == {*MEMBERS, "group.json", "summary.json",
                                                 "summary.csv", "history.svg", ".trainer-run"}
    accuracy: dict[str, list[float]] = {"a": [], "b": []}
    for name in MEMBERS:  # ordinary run directories, each with its own seed
        metrics = json.loads((group / name / "metrics.json").read_text())
        assert metrics["seed"] == int(name[-1])
        assert (group / name / "model.safetensors").is_file()
        accuracy[name[0]].append(metrics["test_accuracy"])
    assert accuracy["a"][0] != accuracy["a"][1] and accuracy["b"][0] != accuracy["b"][1]
    summary = json.loads((group / "summary.json").read_text())
    rows = {r["config"]: r for r in summary["configs"]}
    with open(group / "summary.csv") as f:
        table = {r["config"]: r for r in csv.DictReader(f)}
    for name, values in accuracy.items():
        acc = rows[name]["test_accuracy"]
        assert acc["mean"] == pytest.approx(np.mean(values))
        assert acc["std"] == pytest.approx(np.std(values, ddof=1))
        assert (acc["min"], acc["max"]) == (min(values), max(values))
        assert float(table[name]["mean"]) == pytest.approx(np.mean(values))
        assert float(table[name]["std"]) == pytest.approx(np.std(values, ddof=1))
        assert int(table[name]["runs"]) == int(table[name]["finished"]) == 2
        # the printed table: the config's row, mean ± std in points
        line = next(x for x in result.output.splitlines() if f" {name} " in x and "784-" in x)
        assert f"{np.mean(values):.2%} ± {100 * np.std(values, ddof=1):.2f}" in line
    assert rows["b"]["network"] == "784-32-10"
    table = [x for x in result.output.splitlines() if x[:1] in "┏┃┡│└"]
    assert len(table) == 6 and max(len(x) for x in table) <= 80  # borders, header, 2 rows
    svg = (group / "history.svg").read_text()
    for gid in ("acc-a-0", "acc-a-1", "loss-b-1", "acc-mean-a", "loss-mean-b"):
        assert f'id="{gid}"' in svg
    assert f"Group directory: {group}" in " ".join(result.output.split())


def test_the_same_command_again_trains_nothing(idx_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    a, b = write_configs(tmp_path)
    args = ("train", a, b, "--seeds", "2", "--data-dir", idx_dir, "-q")
    first = run(*args)
    assert first.exit_code == 0, first.output
    (group,) = (tmp_path / "runs").iterdir()  # runs/<time>-a+b
    assert group.name.endswith("-a+b")
    before = snapshot(group)
    calls = []
    monkeypatch.setattr(trainer.batch.run, "train", lambda *a, **k: calls.append(1))
    again = run(*args, "--json")
    assert again.exit_code == 0, again.output
    assert calls == []  # nothing trained
    assert snapshot(group) == before  # no run's file touched
    assert list((tmp_path / "runs").iterdir()) == [group]  # found again, no new group
    summary = json.loads(again.stdout)  # --json: the summary only
    assert summary["group"] == str(Path("runs") / group.name)
    assert [r["finished"] for r in summary["configs"]] == [2, 2]
    # its own folder given back as --run-dir (runs/<time>-a+b, named a+b) is the same group
    given = run(*args, "--run-dir", group, "--json")
    assert given.exit_code == 0, given.output
    assert calls == [] and snapshot(group) == before
    # another batch (other seeds) is another group
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert run("train", a, b, "--seeds", "3,", "--data-dir", idx_dir, "-q").exit_code == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_an_interrupted_batch_resumes_where_it_stopped(idx_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = write_configs(tmp_path, epochs=3)
    straight = tmp_path / "straight"
    assert run("train", a, b, "--seeds", "2", "--data-dir", idx_dir, "--run-dir", straight,
               "-q").exit_code == 0
    real_train, calls, fired = trainer.batch.run.train, [], []

    def stop_in_the_second_run(*args, **kwargs):
        calls.append(kwargs["resume"])
        if len(calls) == 2 and not fired:  # Ctrl-C after the second run's first epoch
            fired.append(True)
            callbacks = kwargs["callbacks"]
            on_epoch = callbacks.on_epoch
            callbacks.on_epoch = lambda s: (on_epoch(s), os.kill(os.getpid(), signal.SIGINT))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trainer.batch.run, "train", stop_in_the_second_run)
    group = tmp_path / "g"
    args = ("train", a, b, "--seeds", "2", "--data-dir", idx_dir, "--run-dir", group, "-q")
    stopped = run(*args)
    assert stopped.exit_code == 130, stopped.output
    assert "Run the same command again" in " ".join(stopped.output.split())
    assert (group / "a-seed0" / "metrics.json").is_file()
    assert not (group / "a-seed1" / "metrics.json").exists()
    state = load_checkpoint(group / "a-seed1")
    assert state.epoch == 2 and len(state.history) == 1  # stopped after epoch 1, checkpointed
    assert not (group / "b-seed0").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (group / "a-seed0").iterdir()}

    calls.clear()
    resumed = run(*args)
    assert resumed.exit_code == 0, resumed.output
    assert len(calls) == 3 and calls[0] is not None and calls[1] is None  # resumed, then new
    assert "a-seed1: resuming at epoch 2" in resumed.output
    assert {p.name: p.stat().st_mtime_ns for p in (group / "a-seed0").iterdir()} == kept
    for name in MEMBERS:  # bitwise the weights of the batch that was never interrupted
        want = load_file(straight / name / "model.safetensors")
        got = load_file(group / name / "model.safetensors")
        assert all(np.array_equal(want[k], got[k]) for k in want), name
    for want, got in zip(json.loads((straight / "summary.json").read_text())["configs"],
                         json.loads((group / "summary.json").read_text())["configs"],
                         strict=True):
        assert want["test_accuracy"] == got["test_accuracy"]


def test_a_diverged_run_is_recorded_kept_and_reported(idx_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = write_configs(tmp_path)
    bad = tmp_path / "hot.json"
    bad.write_text(json.dumps(json.loads(a.read_text()) | {"learning_rate": 1e9}))
    group = tmp_path / "g"
    args = ("train", a, bad, "--data-dir", idx_dir, "--run-dir", group, "-q")
    result = run(*args)
    assert result.exit_code == 1
    assert "1 run(s) diverged" in " ".join(result.output.split())
    assert json.loads((group / "hot-seed0" / "metrics.json").read_text())["diverged"] is True
    summary = json.loads((group / "summary.json").read_text())
    hot = next(r for r in summary["configs"] if r["config"] == "hot")
    assert (hot["diverged"], hot["finished"], hot["test_accuracy"]["mean"]) == (1, 0, None)
    monkeypatch.setattr(trainer.batch.run, "train", lambda *a, **k: pytest.fail("trained"))
    assert run(*args).exit_code == 1  # kept as it is: training it again would diverge again


@pytest.mark.parametrize(("extra", "message"), [
    (["--seeds", "0"], "a count of seeds is from 1"),
    (["--seeds", "1,x"], "give a count"),
    (["--seeds", "2", "--seed", "3"], "not both"),
    (["--seeds", "2", "--resume", "somewhere"], "a batch resumes when the same command"),
    (["--epochs", "0"], "epochs"),
])
def test_bad_batch_input_exits_2_and_writes_nothing(idx_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     extra: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    a, b = write_configs(tmp_path)
    result = run("train", a, b, "--data-dir", idx_dir, *extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_batch_refusals(idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    a, b = write_configs(tmp_path)
    other = tmp_path / "x"
    other.mkdir()
    (other / "a.json").write_text(a.read_text())
    result = run("train", a, other / "a.json", "--data-dir", idx_dir)
    assert result.exit_code == 2 and "are both named 'a'" in " ".join(result.output.split())
    result = run("train", a, a, "--data-dir", idx_dir)
    assert result.exit_code == 2 and "is given twice" in result.output
    b.write_text(json.dumps(json.loads(b.read_text()) | {"momentum": 2}))
    result = run("train", a, b, "--data-dir", idx_dir)  # every config checked before any run
    assert result.exit_code == 2 and "momentum" in result.output
    assert not (tmp_path / "runs").exists()
    result = run("train", a, "--workers", "2", "--data-dir", idx_dir)
    assert result.exit_code == 2 and "--workers runs a batch" in " ".join(result.output.split())
    group = tmp_path / "g"
    assert run("train", a, "--seeds", "1", "--epochs", "1", "--data-dir", idx_dir, "--run-dir",
               group, "-q").exit_code == 0
    result = run("train", a, "--seeds", "2", "--epochs", "1", "--data-dir", idx_dir,
                 "--run-dir", group, "-q")
    assert result.exit_code == 2 and "differs in: seeds" in " ".join(result.output.split())
    assert sorted(p.name for p in group.iterdir() if p.is_dir()) == ["a-seed0"]


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", *map(str, args)]


@pytest.mark.slow
def test_workers_match_one_process_and_ctrl_c_resumes(idx_dir: Path, tmp_path: Path) -> None:
    """Two worker processes train the same runs as one process does; SIGINT to the command
    stops both (exit 130, checkpoints whole), and the same command again finishes the batch."""
    a, b = write_configs(tmp_path, epochs=20)
    one = tmp_path / "one"
    assert run("train", a, b, "--seeds", "2", "--epochs", "2", "--data-dir", idx_dir,
               "--run-dir", one, "-q").exit_code == 0
    two = tmp_path / "two"
    done = subprocess.run(_cli(a, b, "--seeds", "2", "--epochs", "2", "--data-dir", idx_dir,
                               "--run-dir", two, "--workers", "2", "--json"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in MEMBERS:
        want = json.loads((one / name / "metrics.json").read_text())
        got = json.loads((two / name / "metrics.json").read_text())
        assert want["test_accuracy"] == got["test_accuracy"], name
        assert [e["loss"] for e in want["epochs"]] == [e["loss"] for e in got["epochs"]]

    group = tmp_path / "stop"
    cmd = _cli(a, b, "--seeds", "2", "--data-dir", idx_dir, "--run-dir", group,
               "--workers", "2", "--batch-size", "2", "-q")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not all((group / n / LATEST).exists() for n in MEMBERS[:2]) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "Run the same command again" in " ".join(err.split())
    for name in MEMBERS[:2]:
        assert load_checkpoint(group / name).epoch >= 1  # whole and verified
        assert not (group / name / "metrics.json").exists()
    again = subprocess.run([*cmd, "--epochs", "19", "--json"], capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 2 and "differs in: configs" in again.stderr  # another batch
    again = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert [r["finished"] for r in summary["configs"]] == [2, 2]
    assert statistics.fmean(m["epochs"] for r in summary["configs"] for m in r["members"]) == 20


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_workers_die_with_a_killed_driver_and_the_rerun_finishes(idx_dir: Path,
                                                                  tmp_path: Path) -> None:
    """kill -9 of the batch's driver: its workers checkpoint and end within seconds instead of
    training on alone under PID 1 (and holding the runs' locks); the same command again
    resumes them and finishes the batch."""
    from trainer.run.rundir import is_held

    a, b = write_configs(tmp_path, epochs=500)  # far more than the test waits for
    group = tmp_path / "group"
    cmd = _cli(a, b, "--seeds", "2", "--data-dir", idx_dir, "--run-dir", group,
               "--workers", "2", "--batch-size", "2", "-q")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not all((group / n / LATEST).exists() for n in MEMBERS[:2]) and time.time() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2, workers  # the two workers (and multiprocessing's tracker)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.time() + 20
    while (alive := [w for w in workers if Path(f"/proc/{w}").exists()]) and \
            time.time() < deadline:
        time.sleep(0.1)
    for w in alive:  # never leave them behind, even when the test fails
        with contextlib.suppress(ProcessLookupError):
            os.kill(w, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their driver"
    epochs = {n: load_checkpoint(group / n).epoch for n in MEMBERS[:2]}  # whole and verified
    assert not any(is_held(group / n) for n in MEMBERS)
    again = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120  # the rerun takes the runs up again, from their checkpoints
    while (load_checkpoint(group / MEMBERS[0]).epoch <= epochs[MEMBERS[0]]
           and again.poll() is None and time.time() < deadline):
        time.sleep(0.1)
    again.send_signal(signal.SIGINT)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 130, out + err
    assert load_checkpoint(group / MEMBERS[0]).epoch > epochs[MEMBERS[0]]


def test_markdown_table_of_a_summary() -> None:
    from trainer.batch.summary import markdown

    row = {"config": "a", "network": "784-128-10", "epochs": 30, "runs": 3, "finished": 3,
           "test_accuracy": {"mean": 0.9801, "std": 0.0012, "min": 0.979, "max": 0.9815},
           "seconds": {"mean": 15.2, "total": 45.6}}
    lone = row | {"config": "b", "runs": 2, "finished": 1, "test_accuracy": {
        "mean": 0.97, "std": None, "min": 0.97, "max": 0.97}}
    lines = markdown({"configs": [row, lone]}).splitlines()
    assert lines[2] == "| a | 784-128-10 | 30 | 3/3 | 98.01% ± 0.12 | 97.90% | 98.15% | 15 |"
    assert lines[3] == "| b | 784-128-10 | 30 | 1/2 | 97.00% | 97.00% | 97.00% | 15 |"


def test_the_printed_summary_keeps_each_figure_on_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Long config names and deep networks fold; the figures never do (a "98.36% ±" on one
    line and "0.03" on the next reads as two numbers), and the table fits 80 columns."""
    import io

    from rich.console import Console

    from trainer.cli import batch as cli_batch

    out = io.StringIO()
    monkeypatch.setattr(cli_batch, "console", Console(file=out, width=80))
    rows = [{"config": name, "network": network, "epochs": 30, "runs": 3, "finished": 3,
             "test_accuracy": {"mean": 0.9836, "std": 0.0003, "min": 0.9832, "max": 0.9838},
             "seconds": {"mean": 53.9, "total": 161.7}}
            for name, network in (("deep-256-128", "784-256-128-10"),
                                  ("a-config-with-a-long-name", "784-800-800-800-800-10"))]
    cli_batch.print_summary({"name": "g", "group": "/tmp/g", "configs": rows})
    lines = out.getvalue().splitlines()
    table = [x for x in lines if x[:1] in "┏┃┡│└"]
    assert max(len(x) for x in table) <= 80
    figures = [x for x in table if "%" in x]
    assert len(figures) == 2  # one line each carries every figure
    for line in figures:
        for figure in ("98.36% ± 0.03", "98.32%", "98.38%", "53.9", " 3 "):
            assert figure in line


def test_out_of_memory_in_a_batch_is_one_message(idx_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.2 TiB")

    monkeypatch.setattr(trainer.batch.run, "train", no_memory)
    a, b = write_configs(tmp_path)
    result = run("train", a, b, "--data-dir", idx_dir, "--run-dir", tmp_path / "g", "-q")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "a-seed0: out of memory training at batch size 16 on numpy" in out
    assert "host memory" in out and "fewer --workers" not in out and "Traceback" not in out


def test_an_edited_config_under_the_same_name_is_another_batch(idx_dir: Path, tmp_path: Path,
                                                                monkeypatch) -> None:
    """Groups are matched by the configs' contents, not their file names: `a.json` edited is a
    new batch (a new group), never the old group resumed; given the old group, it is refused."""
    monkeypatch.chdir(tmp_path)
    a, _ = write_configs(tmp_path)
    args = ("train", a, "--seeds", "1", "--data-dir", idx_dir, "--limit-train", "64", "-q")
    assert run(*args).exit_code == 0
    (old,) = (tmp_path / "runs").iterdir()
    a.write_text(json.dumps(json.loads(a.read_text()) | {"learning_rate": 0.5}))
    again = run(*args)
    assert again.exit_code == 0, again.output
    groups = sorted((tmp_path / "runs").iterdir())
    assert len(groups) == 2 and old in groups
    new = next(g for g in groups if g != old)
    assert json.loads((new / "a-seed0" / "config.json").read_text())["learning_rate"] == 0.5
    assert json.loads((old / "a-seed0" / "config.json").read_text())["learning_rate"] != 0.5
    refused = run(*args, "--run-dir", old)
    assert refused.exit_code == 2 and "differs in: configs" in " ".join(refused.output.split())
