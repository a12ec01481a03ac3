"""Inputs an attacker (or an accident) would try, each through the CLI: one message naming the
file, key or value, the right exit code, no traceback, and nothing written where it refused."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run as cli_run
from PIL import Image

from trainer.run.model_io import SavedModel, load_model, save_model

ROOT = Path(__file__).parent.parent


def run(*args: object, input: str | None = None):
    """The CLI at 200 columns: no message here is cut by wrapping."""
    return cli_run(*args, input=input, width=200)


# Runs the CLI in a fresh process and reports its peak RSS from /proc (VmHWM: the exec'd
# program's own; getrusage's ru_maxrss would carry the forking pytest process's over exec).
PEAK_RSS_CHILD = ("import sys\n"
                  "from trainer.cli.app import app\n"
                  "try:\n    app(sys.argv[1:])\n"
                  "except SystemExit as e:\n    code = e.code\n"
                  "status = open('/proc/self/status').read()\n"
                  "peak = int(status.split('VmHWM:')[1].split()[0]) // 1024\n"
                  "print(f'peak-rss-mb {peak}', file=sys.stderr)\n"
                  "sys.exit(code)")


def no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small run (synthetic 28x28 digits) and its data folder."""
    from conftest import make_dataset, write_data_folder

    data = write_data_folder(tmp_path_factory.mktemp("data"),
                             make_dataset(n_train=300, n_test=100, shape=(28, 28), classes=10))
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = run("train", "--data-dir", data, "--run-dir", run_dir, "--epochs", 1, "--quiet")
    assert result.exit_code == 0, result.output
    return run_dir, data


@pytest.fixture
def digit(tmp_path: Path) -> Path:
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:16] = 255
    path = tmp_path / "one.png"
    Image.fromarray(image).save(path)
    return path


def copy_run(run_dir: Path, tmp_path: Path, **changes: object) -> Path:
    """The run's files in a new folder, its model re-saved (with a valid checksum) changed."""
    new = tmp_path / "copy"
    new.mkdir()
    for name in ("metrics.json", "config.json"):
        (new / name).write_bytes((run_dir / name).read_bytes())
    model = dataclasses.replace(load_model(run_dir / "model.safetensors"), **changes)
    save_model(new / "model.safetensors", model)
    return new


# --- 1. values from a model file reach the terminal as plain text ---------------------------

@pytest.mark.parametrize("name", ["[/]", "[link=https://evil.example]0[/link]", "[bold]x"])
def test_class_names_with_markup_print_as_written(trained, digit: Path, tmp_path: Path,
                                                  name: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.cli.console import console

    monkeypatch.setattr(console, "width", 250)  # whole names in one cell line each
    run_dir, data = trained
    names = [name] + [str(c) for c in range(1, 10)]
    copy = copy_run(run_dir, tmp_path, class_names=names)
    for args in (("predict", copy, digit, "--top", 10), ("evaluate", copy, "--data-dir", data)):
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert name in result.output  # the markup itself, not what it would draw
        assert "\x1b]8;" not in result.output  # no terminal hyperlink


@pytest.mark.parametrize(("names", "says"), [
    (["\x1b[2J"] + [str(c) for c in range(1, 10)], "class name '\\x1b[2J' is not a printable"),
    ([str(c) for c in range(9)], "class_names must list 10 names, one per output of the "
                                 "network, got 9"),
    (["x" * 41] + [str(c) for c in range(1, 10)], "is not a printable name of 1 to 40"),
])
def test_bad_class_names_are_refused_on_load(trained, digit: Path, tmp_path: Path,
                                             names: list[str], says: str) -> None:
    run_dir, data = trained
    copy = copy_run(run_dir, tmp_path, class_names=names)
    for args in (("predict", copy, digit), ("evaluate", copy, "--data-dir", data)):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert says in " ".join(result.output.split()) and "model.safetensors" in result.output
        assert "\x1b[2J" not in result.output
        no_traceback(result)


# --- 2. --resume on the data the run was trained on ------------------------------------------

@pytest.fixture
def checkpointed(trained, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A finished 2-epoch run with mid-epoch checkpoints, its data, and other data."""
    from conftest import make_dataset, write_data_folder

    _, data = trained
    other = write_data_folder(tmp_path / "other", make_dataset(
        n_train=300, n_test=100, shape=(28, 28), classes=10, seed=9))
    run_dir = tmp_path / "c"
    result = run("train", "--data-dir", data, "--run-dir", run_dir, "--epochs", 2,
                 "--checkpoint-every", 3, "--quiet", "--keep-checkpoints")
    assert result.exit_code == 0, result.output
    return run_dir, data, other


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_resume_on_other_data_is_refused_naming_both(checkpointed) -> None:
    run_dir, data, other = checkpointed
    (run_dir / "checkpoint.safetensors").unlink()  # the previous, mid-epoch one is used
    before = snapshot(run_dir)
    result = run("train", "--resume", run_dir, "--data-dir", other)
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "was trained on other data (SHA-256" in flat and f"{other}" in flat
    assert "resume it with the --data-dir it was trained on" in flat
    assert snapshot(run_dir) == before  # nothing written
    no_traceback(result)


def test_resume_of_a_finished_run_changes_nothing(checkpointed) -> None:
    run_dir, data, _ = checkpointed
    before = snapshot(run_dir)
    result = run("train", "--resume", run_dir, "--data-dir", data)
    assert result.exit_code == 0, result.output
    assert "is finished: 2 epochs trained" in " ".join(result.output.split())
    assert snapshot(run_dir) == before
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["sha256"] == load_model(run_dir / "model.safetensors").data_sha256


# --- 3. a gzip bomb in the data --------------------------------------------------------------

def test_a_gzip_bomb_is_refused_before_it_is_read(trained, tmp_path: Path) -> None:
    """A small .gz whose header claims a billion images (and holds 400 MB of zeros): refused
    from its header, in a process that stays small."""
    import gzip
    import shutil

    _, data = trained
    bomb = tmp_path / "bomb"
    shutil.copytree(data, bomb)
    with gzip.open(bomb / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write((2051).to_bytes(4, "big") + (10**9).to_bytes(4, "big")
                + (28).to_bytes(4, "big") + (28).to_bytes(4, "big"))
        zeros = bytes(1 << 22)
        for _ in range(100):
            f.write(zeros)
    (bomb / "train-images-idx3-ubyte").unlink(missing_ok=True)
    assert (bomb / "train-images-idx3-ubyte.gz").stat().st_size < 2_000_000
    child = PEAK_RSS_CHILD
    result = subprocess.run([sys.executable, "-c", child, "train", "--data-dir", str(bomb),
                             "--run-dir", str(tmp_path / "r")], capture_output=True, text=True,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert "train-images-idx3-ubyte.gz: IDX header too large" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and not (tmp_path / "r").exists()
    peak = int(result.stderr.split("peak-rss-mb ")[1].split()[0])
    assert peak < 300, f"peak RSS {peak} MB"


# --- 4. the model file's integrity ------------------------------------------------------------

def test_a_damaged_model_is_refused(trained, digit: Path, tmp_path: Path) -> None:
    run_dir, data = trained
    copy = copy_run(run_dir, tmp_path)
    blob = bytearray((copy / "model.safetensors").read_bytes())
    blob[-200:-136] = bytes(b ^ 0x55 for b in blob[-200:-136])  # 64 bytes of a weight
    (copy / "model.safetensors").write_bytes(bytes(blob))
    for args in (("predict", copy, digit), ("evaluate", copy, "--data-dir", data)):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert "checksum mismatch: the file is damaged or was edited" in result.output
        no_traceback(result)


def test_a_model_from_another_run_is_refused(trained, digit: Path, tmp_path: Path) -> None:
    run_dir, _ = trained
    copy = copy_run(run_dir, tmp_path, run_id="0" * 32)  # its own checksum, another run's id
    result = run("predict", copy, digit)
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert f"belongs to run '{'0' * 32}'" in flat and "copied in from another run" in flat
    recorded = json.loads((run_dir / "metrics.json").read_text())["run_id"]
    assert recorded == load_model(run_dir / "model.safetensors").run_id


# --- 5. inputs that used to end in a traceback --------------------------------------------------

def deep(n: int) -> str:
    return "[" * n + "]" * n


def test_deeply_nested_json_config_and_space(tmp_path: Path) -> None:
    config = tmp_path / "deep.json"
    config.write_text(deep(100_000))
    result = run("train", config, "--run-dir", tmp_path / "r")
    assert result.exit_code == 2 and "deep.json: nested too deeply to be a config" in result.output
    assert not (tmp_path / "r").exists()
    space = tmp_path / "space.json"
    space.write_text(deep(100_000))
    result = run("sweep", ROOT / "configs" / "default.json", "--space", space, "--trials", 1,
                 "--sweep-dir", tmp_path / "sw")
    assert result.exit_code == 2, result.output
    assert "space.json: nested too deeply to be a space file" in result.output
    no_traceback(result)


def test_deeply_nested_model_metadata(trained, digit: Path, tmp_path: Path) -> None:
    run_dir, _ = trained
    model = load_model(run_dir / "model.safetensors")
    from safetensors.numpy import save

    from trainer.run.model_io import digest

    tensors = {f"layers.{i // 2}.{'weight' if i % 2 == 0 else 'bias'}": p
               for i, p in enumerate(model.params)}
    meta = {"format": "trainer-mlp/1", "config": deep(100_000), "input_scaling": "{}",
            "class_names": "[]", "run_id": model.run_id}
    meta["sha256"] = digest(tensors, json.dumps({k: v for k, v in meta.items()}, sort_keys=True))
    copy = copy_run(run_dir, tmp_path)
    (copy / "model.safetensors").write_bytes(save(tensors, metadata=meta))
    result = run("predict", copy, digit)
    assert result.exit_code == 2 and "model metadata nested too deeply" in result.output
    no_traceback(result)


def test_a_config_without_end_is_read_no_further_than_1_mb(tmp_path: Path) -> None:
    result = run("train", "/dev/zero", "--run-dir", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert "/dev/zero: a config is at most 1 MB; this one is larger" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("device", "says"), [
    ("banana", "--device 'banana' is not a device: use cpu, cuda or cuda:N"),
    ("meta", "--device 'meta' is not supported: use cpu, cuda or cuda:N")])
def test_torch_refuses_devices_it_cannot_train_on(tmp_path: Path, device: str,
                                                  says: str) -> None:
    pytest.importorskip("torch")
    result = run("train", "--backend", "torch", "--device", device, "--run-dir", tmp_path / "r")
    assert result.exit_code == 2 and says in " ".join(result.output.split())
    assert not (tmp_path / "r").exists()
    no_traceback(result)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "twice.json"
    config.write_text('{"epochs": 3, "learning_rate": 0.1, "epochs": 5}')
    result = run("train", config, "--run-dir", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert 'twice.json: not valid JSON: the key "epochs" appears twice in one object' in (
        " ".join(result.output.split()))
    assert not (tmp_path / "r").exists()


def test_a_config_from_standard_input(trained, tmp_path: Path) -> None:
    from trainer.core.config import default_config

    _, data = trained
    piped = default_config().to_dict() | {"epochs": 1, "learning_rate": 0.02}
    result = run("train", "-", "--data-dir", data, "--quiet", input=json.dumps(piped))
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.split("Run directory: ")[1].split()[0])
    try:
        assert run_dir.name.endswith("-stdin")  # named after its config: standard input
        assert json.loads((run_dir / "config.json").read_text())["learning_rate"] == 0.02
    finally:
        import shutil

        shutil.rmtree(run_dir)
    bad = run("train", "-", "--run-dir", tmp_path / "r",
              input=json.dumps(default_config().to_dict() | {"epochs": -1}))
    assert bad.exit_code == 2 and "standard input: epochs must be greater than 0" in bad.output
    assert not (tmp_path / "r").exists()


# --- 10. messages that said something else -------------------------------------------------------

def test_a_config_file_name_that_is_no_run_name_suggests_name(tmp_path: Path) -> None:
    config = tmp_path / "my config.json"
    config.write_text((ROOT / "configs" / "default.json").read_text())
    result = run("train", config)
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "run name 'my config' is not allowed" in flat and "name it with --name NAME" in flat
    no_traceback(result)


def test_a_study_is_called_a_study(tmp_path: Path) -> None:
    result = run("sweep", ROOT / "configs" / "default.json", "--space",
                 ROOT / "configs" / "sweep-default.json", "--trials", 1, "--study", "../x")
    assert result.exit_code == 2 and "study name '../x' is not allowed" in result.output
    assert not Path("x").exists()


def test_a_run_dir_is_claimed_exclusively(tmp_path: Path) -> None:
    from trainer.errors import UsageError
    from trainer.run.rundir import CLAIM, claim_run_dir

    for folder in (tmp_path / "new", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        assert claim_run_dir(folder, "x") == folder and (folder / CLAIM).is_file()
        with pytest.raises(UsageError, match="was just claimed by another run"):
            claim_run_dir(folder, "x")  # as a second run started at the same moment


def test_an_empty_name_is_refused_not_ignored(tmp_path: Path) -> None:
    result = run("train", "--name", "", "--run-dir", tmp_path / "r")
    assert result.exit_code == 2 and "run name '' is not allowed" in result.output
    assert not (tmp_path / "r").exists()


def test_a_run_dir_that_is_a_file_is_called_a_file(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    result = run("train", "--run-dir", target)
    assert result.exit_code == 2, result.output
    assert f"run directory {target} is a file, not a directory" in " ".join(result.output.split())
    assert target.read_text() == "mine"


def test_a_sweep_seed_past_32_bits_is_named(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    result = run("sweep", ROOT / "configs" / "default.json", "--space",
                 ROOT / "configs" / "sweep-default.json", "--trials", 1, "--seed", 1099511627776,
                 "--sweep-dir", tmp_path / "sw")
    assert result.exit_code == 2, result.output
    assert ("the sweep's seed must be from 0 to 4294967295 (Optuna's samplers take 32-bit "
            "seeds), got 1099511627776") in " ".join(result.output.split())
    assert not (tmp_path / "sw").exists()


def test_bench_checks_its_report_path_first(tmp_path: Path) -> None:
    result = run("bench", "--out", tmp_path / "missing" / "b.json", "--batch-sizes", 32)
    assert result.exit_code == 2, result.output
    assert "cannot write --out" in result.output and "No such file or directory" in result.output
    assert "s/epoch" not in result.output  # refused before any benchmark ran


# --- 7. a network that cannot fit is refused before anything is written ------------------------

def test_a_billion_hidden_nodes_is_refused_up_front(trained, tmp_path: Path) -> None:
    """In its own process, whose memory stays small: nothing is allocated for the network."""
    from trainer.core.config import default_config

    _, data = trained
    config = tmp_path / "huge.json"
    huge = default_config().to_dict()
    huge["layers"][1]["nodes"] = 10**9
    config.write_text(json.dumps(huge))
    child = PEAK_RSS_CHILD
    result = subprocess.run([sys.executable, "-c", child, "train", str(config), "--data-dir",
                             str(data), "--run-dir", str(tmp_path / "r")], capture_output=True,
                            text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    flat = " ".join(result.stderr.split())
    assert "this network needs about" in flat and "795,000,000,010 parameters" in flat
    assert "more than the host's available memory (" in flat and "GiB)" in flat
    assert not (tmp_path / "r").exists() and "Traceback" not in result.stderr
    assert int(flat.split("peak-rss-mb ")[1].split()[0]) < 300


# --- 8. Ctrl-C during the final evaluation ---------------------------------------------------

def test_ctrl_c_during_the_final_evaluation_exits_130_with_the_run_whole(
        trained, tmp_path: Path) -> None:
    """A real SIGINT, in a separate `trainer train` process, as its test set is evaluated."""
    _, data = trained
    run_dir = tmp_path / "r"
    child = ("import os, signal, sys\n"
             "from trainer.cli.display import TrainProgress\n"
             "original = TrainProgress.on_test_chunk\n"
             "def interrupted(self, done, total):\n"
             "    if not getattr(self, 'sent', False):\n"
             "        self.sent = True\n"
             "        os.kill(os.getpid(), signal.SIGINT)  # a user's Ctrl-C, right there\n"
             "    original(self, done, total)\n"
             "TrainProgress.on_test_chunk = interrupted\n"
             "from trainer.cli.app import app\n"
             "app(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", child, "train", "--data-dir", str(data),
                             "--run-dir", str(run_dir), "--epochs", "1", "--quiet"],
                            capture_output=True, text=True,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert result.returncode == 130, result.stdout + result.stderr
    assert "SIGINT came after the last training step: the run is complete" in (
        " ".join(result.stderr.split()))
    assert "Traceback" not in result.stderr
    evaluated = run("evaluate", run_dir, "--data-dir", data, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    recorded = json.loads((run_dir / "metrics.json").read_text())["test_accuracy"]
    assert json.loads(evaluated.output)["accuracy"] == pytest.approx(recorded)
    resumed = run("train", "--resume", run_dir, "--data-dir", data, "--quiet")
    assert resumed.exit_code == 0 and "is finished" in resumed.output  # and nothing changed


# --- 9. predict: floating-point images, bad files among good ones, folders --------------------

def test_a_float_tiff_digit_is_read_by_its_range(trained, digit: Path, tmp_path: Path) -> None:
    run_dir, _ = trained
    ink = np.asarray(Image.open(digit), dtype=np.float32) / 255  # 0..1 floats, as TIFFs have
    tiff = tmp_path / "one.tif"
    Image.fromarray(ink, mode="F").save(tiff)
    both = run("predict", run_dir, digit, tiff, "--json")
    assert both.exit_code == 0, both.output
    png, tif = json.loads(both.output)
    assert tif["prediction"] == png["prediction"]  # not "blank": the same digit
    assert tif["top"][0]["probability"] == pytest.approx(png["top"][0]["probability"], abs=0.05)


def test_bad_files_are_reported_and_the_rest_classified(
        trained, digit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.cli.console import console

    monkeypatch.setattr(console, "width", 250)  # whole paths in the table
    run_dir, _ = trained
    folder = tmp_path / "drawn"
    folder.mkdir()
    (folder / "b-two.png").write_bytes(digit.read_bytes())
    (folder / "a-one.png").write_bytes(digit.read_bytes())
    (folder / "c-broken.png").write_text("not an image")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    result = run("predict", run_dir, folder)
    assert result.exit_code == 2, result.output
    assert "c-broken.png: cannot read image" in " ".join(result.output.split())
    table = result.output.split("Predictions")[1]
    assert table.index("a-one.png") < table.index("b-two.png")  # a folder's files, sorted
    assert "notes.txt" not in result.output
    as_json = run("predict", run_dir, folder, "--json")
    assert as_json.exit_code == 2
    rows = json.loads(as_json.stdout)
    assert [Path(r["file"]).name for r in rows] == ["a-one.png", "b-two.png", "c-broken.png"]
    assert "prediction" in rows[0] and "cannot read image" in rows[2]["error"]
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run("predict", run_dir, empty)
    assert nothing.exit_code == 2 and "a folder with no image files" in nothing.output


# --- 11. 80-column terminals --------------------------------------------------------------------

def rendered(thing: object, width: int) -> list[str]:
    import io

    from rich.console import Console

    out = Console(file=io.StringIO(), width=width, color_system=None)
    out.print(thing)
    return out.file.getvalue().splitlines()


def test_bars_epoch_lines_and_the_bench_table_fit_80_columns() -> None:
    from rich.console import Console

    from trainer.cli.bench import bench_table
    from trainer.cli.display import TrainProgress, epoch_line
    from trainer.run.results import EpochStats

    progress = TrainProgress(Console(width=80), epochs=60, live=True)
    progress.progress.update(progress.epoch_task, completed=59, figures="val acc 99.14%")
    progress.progress.update(progress.batch_task, total=1875, completed=1875,
                             description="epoch 60", rate="138k/s",
                             figures="loss 0.0361 acc 98.84%")
    for width in (80, 120):
        lines = rendered(progress.progress.get_renderable(), width)
        assert all(len(line) <= width for line in lines), lines
        assert not any("…" in line for line in lines), lines  # nothing cut short
        assert "1875/1875" in lines[1] and "138k/s" in lines[1] and "98.84%" in lines[1]
    # a run shows validation accuracy where it has a split, else test accuracy
    for held_out in ({"val_accuracy": 0.9914}, {"test_accuracy": 0.9523}):
        widest = EpochStats(**{"epoch": 60, "loss": 0.0361, "train_accuracy": 0.9884,
                               "test_accuracy": None, "seconds": 123.45,
                               "learning_rate": 0.000853} | held_out)
        assert len(epoch_line(widest, 60, show_lr=True)) <= 80
    table = bench_table("s/epoch, median of 3 x 3 after 1 warm-up")
    table.add_row("4096", "peer: JAX `lax.scan` epoch", "0.191", "12.34", "315", "1637", "-",
                  "1.12", "not finite")
    lines = rendered(table, 80)
    assert all(len(line) <= 80 for line in lines) and not any("…" in ln for ln in lines)
    assert "loss" in lines[2] and "not finite" in lines[4]


# --- 12. what people expect of a command-line tool --------------------------------------------

def test_version_completion_and_json_listings(trained) -> None:
    import importlib.metadata

    _, data = trained
    version = run("--version")
    assert version.exit_code == 0
    assert version.output.strip() == f"trainer {importlib.metadata.version('trainer')}"
    assert "--install-completion" in run("--help").output
    listed = json.loads(run("backends", "--json").output)
    numpy = next(b for b in listed if b["name"] == "numpy")
    assert numpy["available"] and "gemm_acc" in numpy["kernels"]
    info = json.loads(run("data", "info", "--data-dir", data, "--json").output)
    assert (info["train_images"], info["test_images"], info["image_shape"]) == (300, 100, [28, 28])
    assert sum(info["train_per_class"]) == 300


def test_validation_split_on_the_command_line(trained, tmp_path: Path) -> None:
    _, data = trained
    result = run("train", "--data-dir", data, "--run-dir", tmp_path / "r", "--epochs", 1,
                 "--validation-split", 50, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["validation_split"] == 50
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["validation_samples"] == 50 and metrics["train_samples"] == 250
    assert "Final training accuracy" in result.output and "after the last update" in (
        " ".join(result.output.split()))


# --- 6. --json is strict JSON -----------------------------------------------------------------

def test_predict_json_with_nan_weights_is_strict_json(trained, digit: Path,
                                                      tmp_path: Path) -> None:
    run_dir, _ = trained
    model = load_model(run_dir / "model.safetensors")
    params = [np.full_like(p, np.nan) for p in model.params]
    copy = copy_run(run_dir, tmp_path, params=params)
    result = subprocess.run([sys.executable, "-m", "trainer", "predict", str(copy), str(digit),
                             "--json"], capture_output=True, text=True,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    rows = json.loads(result.stdout, parse_constant=refuse)
    assert rows[0]["top"][0]["probability"] is None


def test_saved_models_record_their_checksum(trained) -> None:
    run_dir, _ = trained
    model = load_model(run_dir / "model.safetensors")
    assert isinstance(model, SavedModel) and len(model.run_id) == 32
