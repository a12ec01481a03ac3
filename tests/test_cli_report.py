"""The report side of the CLI: evaluate, predict, --json, SVGs, run names and directories."""

from __future__ import annotations

import json
import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import write_data_folder
from helpers import run
from PIL import Image
from references import numpy_forward_predict

from trainer.errors import UsageError
from trainer.run.rundir import check_run_name, claim_run_dir


@pytest.fixture(scope="module")
def mnist_dir(mnist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10000 MNIST training and 1000 test images as an IDX folder, for quick real runs."""
    return write_data_folder(tmp_path_factory.mktemp("mnist-small"), mnist.limit(10000, 1000))


@pytest.fixture(scope="module")
def trained(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "trained"
    result = run("train", "--data-dir", mnist_dir, "--run-dir", run_dir, "--epochs", "3")
    assert result.exit_code == 0, result.output
    return run_dir


def test_train_output_has_every_section(mnist_dir: Path, tmp_path: Path) -> None:
    result = run("train", "--data-dir", mnist_dir, "--run-dir", tmp_path / "r", "--epochs", "1",
                 "--limit-train", "2000")
    assert result.exit_code == 0, result.output
    out = result.output
    sections = ["Network configuration", "epoch   1/1", "Final training accuracy", "Best epoch",
                "Total training time", "Test evaluation", "Confusion matrix", "Per-class metrics",
                "macro avg", "weighted avg", "Overall accuracy", "Run directory"]
    positions = [out.index(s) for s in sections]
    assert positions == sorted(positions), "sections out of neural-net-rs's order"


def test_run_files_and_svgs(trained: Path) -> None:
    names = {p.name for p in trained.iterdir()}
    assert names == {"config.json", "history.csv", "history.json", "metrics.json",
                     "model.safetensors", "history.svg", "confusion.svg",
                     "checkpoint.safetensors",  # the previous one dropped once finished
                     ".trainer-run"}  # --run-dir's claim
    metrics = json.loads((trained / "metrics.json").read_text())
    assert len(metrics["confusion_matrix"]) == 10
    assert np.trace(np.array(metrics["confusion_matrix"])) / 1000 == pytest.approx(
        metrics["test_accuracy"])
    assert set(metrics["per_class"]) == {str(c) for c in range(10)}
    assert metrics["test_samples"] == 1000 and metrics["train_samples"] == 10000
    history = ET.parse(trained / "history.svg").getroot()
    ids = {el.get("id") for el in history.iter()}
    assert {"loss", "train_accuracy", "test_accuracy"} <= ids
    confusion = ET.parse(trained / "confusion.svg").getroot()
    texts = {el.text for el in confusion.iter() if el.text}
    diagonal = np.diag(np.array(metrics["confusion_matrix"]))
    assert all(str(n) in texts for n in diagonal)
    csv_lines = (trained / "history.csv").read_text().splitlines()
    assert csv_lines[0] == ("epoch,loss,train_accuracy,test_accuracy,seconds,val_accuracy,"
                            "learning_rate")
    assert len(csv_lines) == 4


def test_evaluate_reproduces_the_recorded_accuracy(trained: Path, mnist_dir: Path) -> None:
    recorded = json.loads((trained / "metrics.json").read_text())
    result = run("evaluate", trained, "--data-dir", mnist_dir, "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got["accuracy"] == recorded["test_accuracy"]
    assert got["confusion_matrix"] == recorded["confusion_matrix"]
    human = run("evaluate", trained, "--data-dir", mnist_dir)
    assert human.exit_code == 0 and "Overall accuracy" in human.output
    assert f"{recorded['test_accuracy']:.2%}" in human.output


def test_model_trained_on_strict_evaluates_the_same_on_numpy(mnist_dir: Path,
                                                            tmp_path: Path) -> None:
    run_dir = tmp_path / "strict"
    result = run("train", "--backend", "array-api-strict", "--data-dir", mnist_dir,
                 "--run-dir", run_dir, "--epochs", "1", "--limit-train", "3000", "-q")
    assert result.exit_code == 0, result.output
    recorded = json.loads((run_dir / "metrics.json").read_text())
    got = json.loads(run("evaluate", run_dir, "--data-dir", mnist_dir, "--backend", "numpy",
                         "--json").output)
    assert got["accuracy"] == recorded["test_accuracy"]
    assert got["confusion_matrix"] == recorded["confusion_matrix"]


def test_predict_reads_mnist_pngs_and_inverted_copies(trained: Path, mnist, tmp_path: Path) -> None:
    from trainer.run.inference import load_run

    # pick test images the model classifies correctly, render them as files like a user would
    model, _ = load_run(trained)
    from trainer.run.inference import predict_proba
    correct = np.flatnonzero(predict_proba(model, mnist.test_images[:100]).argmax(1)
                             == mnist.test_labels[:100])[:8]
    files, inverted = [], []
    for i in correct:
        img = mnist.test_images[i]
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(img).save(files[-1])
        inverted.append(tmp_path / f"digit{i}-inverted.png")
        Image.fromarray(255 - img).save(inverted[-1])
    want = [str(mnist.test_labels[i]) for i in correct]
    for batch in (files, inverted):
        result = run("predict", trained, *batch, "--json")
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output)
        assert [r["prediction"] for r in rows] == want
        for r in rows:
            probs = [t["probability"] for t in r["top"]]
            assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    human = run("predict", trained, files[0])
    assert human.exit_code == 0 and want[0] in human.output


def test_predict_bad_image_exits_2(trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    result = run("predict", trained, bad)
    assert result.exit_code == 2 and "not-an-image.png" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_predict_refuses_a_fifo_instead_of_hanging(trained: Path, mnist, tmp_path: Path) -> None:
    """A named pipe nobody writes to would block the read for ever: it is refused on its own
    line, and the image beside it is still classified."""
    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    image = tmp_path / "seven.png"
    Image.fromarray(mnist.test_images[0]).save(image)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(run("predict", trained, fifo, image,
                                                             "--json")), daemon=True)
    worker.start()
    worker.join(timeout=20)
    if not done:  # unblock the read so the thread can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("predict hung on the FIFO")
    result = done[0]
    assert result.exit_code == 2, result.output
    assert "digit.png: not a regular file" in " ".join(result.output.split())
    assert "Traceback" not in result.output and "seven.png" in result.output


def test_evaluate_missing_run_exits_2(tmp_path: Path) -> None:
    result = run("evaluate", tmp_path / "nope")
    assert result.exit_code == 2 and "nope" in result.output


def test_train_json_is_machine_readable(mnist_dir: Path, tmp_path: Path) -> None:
    result = run("train", "--data-dir", mnist_dir, "--run-dir", tmp_path / "j", "--epochs", "1",
                 "--limit-train", "1000", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)  # nothing but the JSON on stdout
    assert summary["run_dir"] == str(tmp_path / "j")
    assert len(summary["epochs"]) == 1
    # the accuracy of the saved model, run through an independent NumPy forward pass
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from trainer.data.idx import read_images, read_labels

    model = tmp_path / "j" / "model.safetensors"
    with safe_open(str(model), framework="numpy") as f:
        scaling = json.loads(f.metadata()["input_scaling"])
    pred = numpy_forward_predict(load_file(model), scaling,
                                 read_images(mnist_dir / "t10k-images-idx3-ubyte"))
    labels = read_labels(mnist_dir / "t10k-labels-idx1-ubyte")
    assert summary["test_accuracy"] == pytest.approx(np.mean(pred == labels), abs=1e-3)
    assert summary["test_accuracy"] > 0.7  # 1000 real images, one epoch: it learned


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "x" * 101, "a\\b"])
def test_bad_run_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="run name"):
        check_run_name(name)


def test_bad_run_name_from_cli_exits_2(mnist_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("train", "--data-dir", mnist_dir, "--name", "../outside", "--epochs", "1")
    assert result.exit_code == 2 and "run name" in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "outside").exists()


def test_concurrent_runs_with_one_name_get_distinct_directories(tmp_path: Path) -> None:
    claimed: list[Path] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        claimed.append(claim_run_dir(None, "same", root=tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(claimed)) == 8 and all(p.is_dir() for p in claimed)


def test_the_per_class_table_prints_class_names_as_text() -> None:
    """Class names come from files: markup in one is shown, not applied, in the per-class table
    itself (the confusion table prints the names too, which once hid a bare one here)."""
    from rich.console import Console

    from trainer.cli.display import class_table
    from trainer.core.metrics import report

    names = ["[bold]x[/bold]", "[red]y", "a\x1b[2Jb"]
    console = Console(record=True, width=200, color_system=None)
    console.print(class_table(report(np.array([[3, 1, 0], [0, 2, 0], [1, 0, 4]])), names))
    text = console.export_text()
    assert "[bold]x[/bold]" in text and "[red]y" in text and "a\\x1b[2Jb" in text
    assert "\x1b" not in text


def test_the_per_class_table_has_no_accuracy_column_equal_to_recall() -> None:
    """Per class, "accuracy" (its images recognised) is recall: one column, read back from an
    independent count of the confusion matrix."""
    from rich.console import Console

    from trainer.cli.display import class_table
    from trainer.core.metrics import report

    confusion = np.array([[3, 1, 0], [0, 2, 0], [1, 0, 4]])
    console = Console(record=True, width=200, color_system=None)
    console.print(class_table(report(confusion), ["a", "b", "c"]))
    lines = console.export_text().splitlines()
    head = next(line for line in lines if "precision" in line)
    assert [c for c in head.replace("┃", " ").replace("|", " ").split()] == [
        "class", "precision", "recall", "F1", "support"]
    row = next(line for line in lines if line.replace("│", " ").split()[:1] == ["c"])
    assert row.replace("│", " ").split()[1:3] == [f"{4 / 4:.2%}", f"{4 / 5:.2%}"]
