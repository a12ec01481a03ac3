"""`trainer sweep` as a user runs it: outputs, samplers, bad spaces, failures, workers."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import run

from trainer.core.config import default_config
from trainer.data.dataset import load_dataset

optuna = pytest.importorskip("optuna")

from trainer.sweep.run import SweepSettings, run_sweep  # noqa: E402
from trainer.sweep.space import PERTURB_FACTOR, PERTURB_SHARE, parse_space  # noqa: E402
from trainer.sweep.study import perturb_sampler  # noqa: E402

ROOT = Path(__file__).parent.parent
SPACE = {"learning_rate": {"log_uniform": [0.003, 0.1]}, "momentum": {"uniform": [0.3, 0.95]},
         "batch_size": {"choice": [16, 32, 64]}, "layers[1].nodes": {"int": [16, 128], "log": True}}


@pytest.fixture(scope="module")
def noisy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2000 synthetic 28x28 training images, 30% of them mislabelled: trials score differently."""
    from conftest import make_dataset, write_data_folder

    data = make_dataset(n_train=2000, n_test=200, shape=(28, 28), classes=10, seed=3)
    rng = np.random.default_rng(0)
    labels = data.train_labels.copy()
    flip = rng.random(len(labels)) < 0.3
    labels[flip] = rng.integers(0, 10, int(flip.sum()))
    data = dataclasses.replace(data, train_labels=labels)
    return write_data_folder(tmp_path_factory.mktemp("noisy"), data)


def files(tmp_path: Path, space: dict | None = None, **changes) -> tuple[Path, Path]:
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(default_config().to_dict() | {"epochs": 1} | changes))
    sp = tmp_path / "space.json"
    sp.write_text(json.dumps(space or SPACE))
    return cfg, sp


def study_of(sweep_dir: Path, name: str = "tiny", url: str | None = None):
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///{sweep_dir}/study.db")


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_sweep_writes_leaderboard_best_and_plots_and_best_trains(
        tmp_path: Path, noisy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `.[sweep]` does not install scikit-learn: the whole report must be made without it
    monkeypatch.setitem(sys.modules, "sklearn", None)
    cfg, space = files(tmp_path)
    out = tmp_path / "sw"
    args = ["sweep", cfg, "--space", space, "--trials", 4, "--data-dir", noisy_dir,
            "--sweep-dir", out, "--seed", 1]
    result = run(*args)
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "leaderboard.csv")
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]
    assert list(rows[0])[:6] == ["rank", "trial", "state", "value", "best_epoch", "seconds"]
    assert {"learning_rate", "momentum", "batch_size", "layers[1].nodes"} <= set(rows[0])
    assert [r["note"] for r in rows if r["trial"] == "0"] == ["the config as given"]
    study = study_of(out)
    best = study.best_trial
    assert rows[0]["trial"] == str(best.number) and float(rows[0]["value"]) == best.value
    saved = json.loads((out / "best.json").read_text())
    assert saved.pop("comment").startswith(f"the sweep's best trial ({best.number}")
    assert saved == json.loads((out / "trials" / str(best.number) / "config.json").read_text())
    assert saved["learning_rate"] == best.params["learning_rate"]
    assert saved["layers"][1]["nodes"] == best.params["layers[1].nodes"]
    metrics = json.loads((out / "trials" / str(best.number) / "metrics.json").read_text())
    assert metrics["validation_accuracy"] == best.value and metrics["test_accuracy"] is None
    assert metrics["test_samples"] == 0 and metrics["confusion_matrix"] is None
    assert (out / "trials" / str(best.number) / "model.safetensors").is_file()
    # a trial was tested on nothing: evaluating it uses the whole test set
    evaluated = run("evaluate", out / "trials" / str(best.number), "--data-dir", noisy_dir,
                    "--json")
    assert evaluated.exit_code == 0, evaluated.output
    test_images = len(load_dataset(noisy_dir).test_labels)
    assert np.sum(json.loads(evaluated.output)["confusion_matrix"]) == test_images
    assert 'id="best"' in (out / "history.svg").read_text()
    # 4 completed trials, every parameter varied, different scores: one bar per parameter
    importances = (out / "importances.svg").read_text()
    assert importances.count('id="importances"') == 4
    assert all(name in importances for name in SPACE)
    # 4 trials: the importances come with their caveat, in the summary and on the plot
    assert "Importances (from 4 trials: too few to say much): " in result.output
    assert "too few to say much" in importances
    assert f"Best: trial {best.number}" in result.output
    full = json.loads((out / "best-full.json").read_text())
    assert full.pop("comment") and full == saved | {"validation_split": 0.0}  # the base's
    trained = run("train", out / "best.json", "--data-dir", noisy_dir, "--run-dir",
                  tmp_path / "best-run", "--quiet")
    assert trained.exit_code == 0, trained.output
    assert "as the sweep trained it: 1 epochs, validation_split 0.1" in " ".join(
        trained.output.splitlines()[0].split())  # its first line says what it is
    # re-running resumes: nothing is redone, a higher target adds trials
    assert run(*args).exit_code == 0 and len(study_of(out).trials) == 4
    assert run(*args[:5], 5, *args[6:]).exit_code == 0
    trials = sorted(study_of(out).trials, key=lambda t: t.number)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert trials[4].params not in [t.params for t in trials[:4]]  # a new point, not a repeat
    changed = run(*args[:5], 5, *args[6:], "--epochs", 2)
    assert changed.exit_code == 2 and "different config" in changed.output


def test_best_full_keeps_the_hyper_parameters_and_takes_the_base_budget(tmp_path: Path) -> None:
    """A sweep run with --epochs 2 and a 10% validation split on a base of 10 epochs and none:
    best.json is the trial as measured, best-full.json the base's budget; both say so."""
    from types import SimpleNamespace

    from trainer.core.config import Config
    from trainer.sweep.report import write_best

    base = default_config().replace(epochs=10)
    swept = base.replace(epochs=2, validation_split=0.1)
    settings = SweepSettings(swept, parse_space(SPACE, swept), 4, tmp_path, "s",
                             full_config=base)
    params = {"learning_rate": 0.02, "momentum": 0.5, "batch_size": 64, "layers[1].nodes": 48}
    write_best(settings, SimpleNamespace(number=3, value=0.9, params=params))
    best, full = (Config.from_file(tmp_path / n) for n in ("best.json", "best-full.json"))
    assert (best.epochs, best.validation_split, full.epochs, full.validation_split) == (
        2, 0.1, 10, 0.0)
    for c in (best, full):
        assert (c.learning_rate, c.momentum, c.batch_size, c.sizes[1]) == (0.02, 0.5, 64, 48)
    assert best.notes[0].endswith("as the sweep trained it: 2 epochs, validation_split 0.1; "
                                  "best-full.json trains it with 10 epochs, validation_split 0")
    assert "with the base config's 10 epochs, validation_split 0" in full.notes[0]


def test_a_report_part_that_fails_is_a_note_not_a_failed_sweep(
        tmp_path: Path, noisy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.sweep.report as report

    def broken(*args: object) -> None:
        raise ImportError("no module named 'plotting_lib'")

    monkeypatch.setattr(report, "importances", broken)
    monkeypatch.setattr(report, "_draw_history", broken)
    cfg, space = files(tmp_path)
    out = tmp_path / "sw"
    result = run("sweep", cfg, "--space", space, "--trials", 2, "--data-dir", noisy_dir,
                 "--sweep-dir", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["notes"] == [
        "could not write history.svg: ImportError: no module named 'plotting_lib'",
        "no importances.svg: ImportError: no module named 'plotting_lib'"]
    assert summary["files"] == ["leaderboard.csv", "best.json", "best-full.json"]
    assert (out / "best.json").is_file() and len(read_csv(out / "leaderboard.csv")) == 2
    assert not (out / "history.svg").exists() and not (out / "importances.svg").exists()


def test_ctrl_c_exits_130_even_when_the_report_fails(
        tmp_path: Path, noisy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.sweep.run as sweep

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    def broken(*args: object) -> None:
        raise ImportError("Tried to import 'sklearn' but failed")

    monkeypatch.setattr(sweep, "work", interrupted)
    monkeypatch.setattr(sweep, "write_outputs", broken)
    cfg, space = files(tmp_path)
    result = run("sweep", cfg, "--space", space, "--trials", 2, "--data-dir", noisy_dir,
                 "--sweep-dir", tmp_path / "sw")
    assert result.exit_code == 130, result.output
    assert "interrupted: the sweep's trials so far are in" in result.output


def test_objective_never_touches_the_test_set(tmp_path: Path, monkeypatch) -> None:
    from conftest import make_dataset

    import trainer.sweep.run as sweep

    touched: list[object] = []

    class Poison:
        """A test array that records every use but the empty slice `[:0]`, which reads no
        pixels (how train(limit_test=0) drops the test set)."""

        def __init__(self, empty: np.ndarray) -> None:
            self.empty = empty

        def __getitem__(self, key: object) -> np.ndarray:
            if key == slice(None, 0):
                return self.empty
            touched.append(key)
            raise AssertionError(f"the sweep read the test set ([{key}])")

        def __len__(self) -> int:
            touched.append("len")
            raise AssertionError("the sweep looked at the test set (len)")

        def __getattr__(self, name: str):
            touched.append(name)
            raise AssertionError(f"the sweep touched the test set ({name})")

    data = make_dataset(n_train=300, n_test=50, shape=(28, 28), classes=10)
    data = dataclasses.replace(data, test_images=Poison(data.test_images[:0]),
                               test_labels=Poison(data.test_labels[:0]))
    seen = []

    def spy(config, data, *args, **kwargs):
        seen.append(kwargs.get("limit_test"))
        return real(config, data, *args, **kwargs)

    real = sweep.train
    monkeypatch.setattr(sweep, "train", spy)
    cfg = default_config().replace(epochs=1, validation_split=0.2)
    settings = SweepSettings(cfg, parse_space(SPACE, cfg), 2, tmp_path / "sw", "t")
    summary = run_sweep(settings, data)
    assert seen == [0, 0] and touched == []
    assert summary["trials"]["COMPLETE"] + summary["trials"]["PRUNED"] == 2
    metrics = json.loads((tmp_path / "sw" / "trials" / "0" / "metrics.json").read_text())
    assert metrics["test_accuracy"] is None and metrics["test_samples"] == 0


def test_a_bad_sweep_dir_or_timeout_exits_2_without_a_traceback(tmp_path: Path,
                                                                idx_dir: Path) -> None:
    cfg, sp = files(tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("a file, not a directory")
    result = run("sweep", cfg, "--space", sp, "--trials", 1, "--data-dir", idx_dir,
                 "--sweep-dir", taken)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"cannot create sweep directory {taken}" in message and "--sweep-dir" in message
    assert "Traceback" not in result.output and taken.read_text() == "a file, not a directory"
    result = run("sweep", cfg, "--space", sp, "--trials", 1, "--data-dir", idx_dir,
                 "--sweep-dir", tmp_path / "sw", "--timeout", 0)
    assert result.exit_code == 2 and "--timeout" in result.output, result.output
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("space, words", [
    ({"lerning_rate": {"uniform": [0.1, 0.2]}}, ["unknown config key 'lerning_rate'"]),
    ({"layers[5].nodes": {"int": [8, 16]}}, ["layers[5].nodes", "layers[0] to layers[2]"]),
    ({"momentum": {"uniform": [0.9, 0.1]}}, ["momentum", "low < high"]),
    ({"learning_rate": {"log_uniform": [0, 0.1]}}, ["learning_rate", "low > 0"]),
    ({"batch_size": {"choice": []}}, ["batch_size", "non-empty list"]),
    ({"momentum": {"gaussian": [0, 1]}}, ["momentum", "expected one of uniform"]),
    ({"momentum": {"uniform": [0.5, 1.0]}}, ["momentum = 1.0 (upper bound)", "less than 1"]),
    ({"batch_size": {"uniform": [8, 64]}}, ["batch_size", "valid integer"]),
    ({"layers[0].nodes": {"choice": [784, 100]}}, ["layers[0].nodes = 100", "784 pixels"]),
])
def test_a_bad_space_exits_2_naming_file_and_key(tmp_path: Path, idx_dir: Path, space: dict,
                                                words: list[str]) -> None:
    cfg, sp = files(tmp_path, space)
    result = run("sweep", cfg, "--space", sp, "--trials", 2, "--data-dir", idx_dir,
                 "--sweep-dir", tmp_path / "sw")
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    for word in [str(sp), *words]:
        assert word in message
    assert "Traceback" not in result.output and not (tmp_path / "sw").exists()


def test_grid_sampler_runs_every_point_once(tmp_path: Path, noisy_dir: Path) -> None:
    grid = {"batch_size": {"choice": [16, 32]}, "layers[1].nodes": {"int": [8, 16], "step": 8}}
    cfg, sp = files(tmp_path, grid)
    out = tmp_path / "sw"
    result = run("sweep", cfg, "--space", sp, "--trials", 10, "--sampler", "grid",
                 "--data-dir", noisy_dir, "--sweep-dir", out, "--json")
    assert result.exit_code == 0, result.output
    points = {(t.params["batch_size"], t.params["layers[1].nodes"]) for t in study_of(out).trials}
    assert points == {(16, 8), (16, 16), (32, 8), (32, 16)}
    assert len(study_of(out).trials) == 4 and json.loads(result.output)["best"]["value"] > 0.5
    sp.write_text(json.dumps(SPACE))
    bad = run("sweep", cfg, "--space", sp, "--trials", 2, "--sampler", "grid",
              "--sweep-dir", tmp_path / "sw2")
    assert bad.exit_code == 2 and "grid sampler needs choice or int" in bad.output


def test_perturb_stays_near_the_best_and_inside_the_space() -> None:
    space = parse_space(SPACE | {"layers[1].activation": {"choice": ["sigmoid", "relu"]}},
                        default_config())
    study = optuna.create_study(direction="maximize", sampler=perturb_sampler(space, seed=0))
    first = study.ask(space.distributions())  # nothing completed yet: anywhere in the space
    assert all(p.contains(first.params[p.path]) for p in space.params)
    study.tell(first, 0.5)
    center = {"learning_rate": 0.05, "momentum": 0.9, "batch_size": 32, "layers[1].nodes": 20,
              "layers[1].activation": "relu"}
    study.add_trial(optuna.create_trial(params=center, distributions=space.distributions(),
                                        value=0.9))
    kept, momenta = 0, set()
    for _ in range(200):
        trial = study.ask(space.distributions())
        study.tell(trial, 0.1)  # worse: the best stays the center
        for p in space.params:
            v = trial.params[p.path]
            assert p.contains(v), (p.path, v)
            if p.kind == "uniform":
                assert abs(v - center[p.path]) <= PERTURB_SHARE * (p.high - p.low) + 1e-12
            elif p.kind == "log_uniform" or p.log:
                ratio = v / center[p.path]
                assert 1 / PERTURB_FACTOR - 0.03 <= ratio <= PERTURB_FACTOR + 0.03, (p.path, v)
            kept += p.kind == "choice" and v == center[p.path]
        momenta.add(trial.params["momentum"])
    assert 0.7 * 400 - 40 < kept < 400  # kept with probability 0.7 (+ redrawn the same)
    assert len(momenta) > 100 and max(momenta) == 0.95  # it moves, clipped at the bound


@pytest.mark.slow
def test_a_diverging_trial_is_failed_and_the_sweep_completes(tmp_path: Path,
                                                            noisy_dir: Path) -> None:
    cfg, sp = files(tmp_path, {"learning_rate": {"choice": [1e6, 0.01]},
                               "momentum": {"choice": [0.5]}})
    out = tmp_path / "sw"
    result = run("sweep", cfg, "--space", sp, "--trials", 3, "--sampler", "grid",
                 "--data-dir", noisy_dir, "--sweep-dir", out)
    assert result.exit_code == 0, result.output
    trials = {t.params["learning_rate"]: t for t in study_of(out).trials}
    assert trials[1e6].state.name == "FAIL" and "diverged" in trials[1e6].user_attrs["error"]
    assert trials[0.01].state.name == "COMPLETE"
    failed = json.loads((out / "trials" / str(trials[1e6].number) / "metrics.json").read_text())
    assert failed["state"] == "FAIL" and "diverged" in failed["message"]
    assert "1 complete, 1 fail" in result.output


def _two_workers(tmp_path: Path, noisy_dir: Path, url: str | None) -> None:
    cfg, sp = files(tmp_path)
    name = f"w{uuid.uuid4().hex[:8]}"
    storage = ["--storage", url] if url else []
    result = run("sweep", cfg, "--space", sp, "--trials", 6, "--workers", 2, "--study", name,
                 "--sampler", "random", "--data-dir", noisy_dir, "--sweep-dir", tmp_path / "sw",
                 "--json", *storage)
    assert result.exit_code == 0, result.output
    trials = study_of(tmp_path / "sw", name, url or f"sqlite:///{tmp_path}/sw/study.db").trials
    assert sorted(t.number for t in trials) == list(range(6))  # none lost, none twice
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both did some
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6  # different points
    assert sum(json.loads(result.output)["trials"].values()) == 6


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(tmp_path: Path, noisy_dir: Path) -> None:
    _two_workers(tmp_path, noisy_dir, None)


@pytest.mark.slow
def test_two_worker_processes_share_one_postgres_study(tmp_path: Path, noisy_dir: Path) -> None:
    url = os.environ.get("TRAINER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("TRAINER_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server)")
    _two_workers(tmp_path, noisy_dir, url)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_killed_workers_trial_is_failed_and_run_again(tmp_path: Path, noisy_dir: Path) -> None:
    cfg, sp = files(tmp_path, epochs=40)
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "trainer", "sweep", str(cfg), "--space", str(sp), "--trials",
           "1", "--data-dir", str(noisy_dir), "--sweep-dir", str(out), "--heartbeat", "1",
           "--json"]
    worker = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and worker.poll() is None:
        # trials/0 appears once the study's tables and trial 0 exist
        running = [t for t in study_of(out).trials if t.state.name == "RUNNING"] \
            if (out / "trials" / "0").exists() else []
        if running and running[0].intermediate_values:
            break
        time.sleep(0.05)
    assert worker.poll() is None, worker.stderr.read().decode()
    worker.send_signal(signal.SIGKILL)  # mid-trial: no chance to record anything
    worker.wait()
    assert [t.state.name for t in study_of(out).trials] == ["RUNNING"]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    killed, retry = study_of(out).trials
    assert killed.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.params == killed.params
    retried = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback",
                      optuna.storages.RetryFailedTrialCallback)
    assert retried.retried_trial_number(retry) == 0
    assert json.loads(again.stdout)["trials"]["COMPLETE"] == 1


def test_importances_carry_a_caveat_below_ten_trials() -> None:
    from trainer.sweep.report import TRUSTED_TRIALS, _importance_title

    assert TRUSTED_TRIALS == 10
    assert _importance_title("s", 10) == "s"
    assert _importance_title("s", 9) == "s (from 9 trials: too few to say much)"
