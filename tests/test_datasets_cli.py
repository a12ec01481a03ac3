"""--dataset as a user runs it, with local stand-ins for the publishers; the neural-net-rs
legacy config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fake_publishers import make_publishers, serve
from PIL import Image
from typer.testing import CliRunner

from trainer.cli.app import app
from trainer.core.config import Config
from trainer.data.datasets import DATASETS
from trainer.run.model_io import load_model

runner = CliRunner()
CONFIGS = Path(__file__).parent.parent / "configs"
FASHION = list(DATASETS["fashion-mnist"].classes)


@pytest.fixture(scope="module")
def pub():
    return make_publishers(n_train=1200, n_test=300, letters_train=1300)


@pytest.fixture
def publishers(pub, tmp_path: Path, monkeypatch) -> str:
    """The stand-in server as $TRAINER_MIRROR, the registry pinned to its files' MD5s, a
    private cache; yields the server's URL."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TRAINER_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    for name in DATASETS:
        monkeypatch.setitem(DATASETS, name, pub.spec(name))
    with serve(pub.files) as url:
        monkeypatch.setenv("TRAINER_MIRROR", url)
        yield url


def test_fetch_then_train_fashion_shows_clothes(publishers: str, pub, tmp_path: Path) -> None:
    fetched = runner.invoke(app, ["data", "fetch", "--dataset", "fashion-mnist"])
    assert fetched.exit_code == 0, fetched.output
    assert "Fetched Fashion-MNIST from Zalando Research" in fetched.output
    assert "1200 training and 300 test images, 10 classes" in fetched.output
    info = runner.invoke(app, ["data", "info", "--dataset", "fashion-mnist"])
    assert info.exit_code == 0 and "fashion-mnist (10 classes)" in info.output
    assert "T-shirt/top" in info.output and "manifest verified" in info.output
    run_dir = tmp_path / "run"
    trained = runner.invoke(app, ["train", str(CONFIGS / "fashion.json"), "--dataset",
                                  "fashion-mnist", "--epochs", "1", "--limit-train", "1000",
                                  "--run-dir", str(run_dir)])
    assert trained.exit_code == 0, trained.output
    assert "Downloading" not in trained.output  # from the cache
    for name in FASHION:  # the confusion matrix's rows and the per-class table
        assert trained.output.count(name) == 2, name
    assert "0 T-shirt/top" in trained.output and "9 Ankle boot" in trained.output
    model = load_model(run_dir / "model.safetensors")
    assert model.class_names == FASHION and model.dataset == "fashion-mnist"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["per_class"]) == FASHION and metrics["data"]["dataset"] == "fashion-mnist"
    evaluated = runner.invoke(app, ["evaluate", str(run_dir), "--json"])  # its dataset: Fashion
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert list(report["per_class"]) == FASHION
    assert report["accuracy"] == metrics["test_accuracy"]
    image = tmp_path / "trouser.png"
    Image.fromarray(pub.upright["fashion-mnist"].test_images[0]).save(image)
    predicted = runner.invoke(app, ["predict", str(run_dir), str(image), "--json"])
    assert predicted.exit_code == 0, predicted.output
    row = json.loads(predicted.output)[0]
    assert row["prediction"] in FASHION and {t["class"] for t in row["top"]} <= set(FASHION)


def test_emnist_letters_trains_on_26_classes(publishers: str, tmp_path: Path) -> None:
    wrong = runner.invoke(app, ["train", "--dataset", "emnist-letters", "--epochs", "1"])
    assert wrong.exit_code == 2
    assert ("layers[2].nodes is 10, but the dataset emnist-letters has 26 classes: set it to 26"
            in wrong.output)
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    run_dir = tmp_path / "letters"
    trained = runner.invoke(app, ["train", str(CONFIGS / "emnist-letters.json"), "--dataset",
                                  "emnist-letters", "--epochs", "2", "--run-dir", str(run_dir)])
    assert trained.exit_code == 0, trained.output
    assert "26 x 26 confusion matrix is too wide" in trained.output and "Z/z" in trained.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["confusion_matrix"]) == 26 and metrics["test_accuracy"] > 0.5
    names = list(metrics["per_class"])
    assert names[:2] == ["A/a", "B/b"] and names[-1] == "Z/z"
    # the first of the largest mistakes listed is a largest off-diagonal cell of metrics.json's
    cm = np.array(metrics["confusion_matrix"])
    np.fill_diagonal(cm, 0)
    table = trained.output.split("Most frequent confusions (of 26 classes)")[1]
    actual, predicted, count, _ = [c.strip() for c in
                                   [r for r in table.splitlines() if "/" in r][0].split("│")[1:5]]
    assert int(count) == cm.max() == cm[names.index(actual), names.index(predicted)] > 0


def test_evaluate_on_another_dataset_says_so(publishers: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "kmnist"
    trained = runner.invoke(app, ["train", "--dataset", "kmnist", "--epochs", "1",
                                  "--run-dir", str(run_dir), "--quiet"])
    assert trained.exit_code == 0, trained.output
    other = runner.invoke(app, ["evaluate", str(run_dir), "--dataset", "fashion-mnist"])
    assert other.exit_code == 0, other.output
    assert "note: the model was trained on kmnist; evaluating it on fashion-mnist" in \
        other.output
    resumed = runner.invoke(app, ["train", "--resume", str(run_dir)])  # on KMNIST again
    assert resumed.exit_code == 0, resumed.output
    assert "is finished" in resumed.output and "nothing changed" in resumed.output


def test_fetch_emnist_caches_every_split(publishers: str, tmp_path: Path) -> None:
    fetched = runner.invoke(app, ["data", "fetch", "--dataset", "emnist-balanced", "--quiet"])
    assert fetched.exit_code == 0, fetched.output
    assert "47 classes" in fetched.output
    assert ("also cached: emnist-digits, emnist-letters, emnist-byclass, emnist-bymerge, "
            "emnist-mnist") in fetched.output
    info = runner.invoke(app, ["data", "info", "--dataset", "emnist-letters", "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["class_names"][:2] == ["A/a", "B/b"]


LEGACY = {  # neural-net-rs's config.json at its commit "Add momentum and regularisation ..."
    "layers": [{"nodes": 784, "activation": "Sigmoid"}, {"nodes": 128, "activation": "Softmax"},
               {"nodes": 10}],
    "learning_rate": 0.01, "epochs": 30, "batch_size": 32, "momentum": 0.5,
    "regularization_rate": 0.0001}


def test_legacy_regularization_rate_means_l2() -> None:
    cfg = Config.from_dict(LEGACY, source="config.json")
    assert (cfg.regularization_type, cfg.regularization_rate) == ("L2", 0.0001)
    assert cfg.notes == ("config.json: regularization_rate 0.0001 without regularization_type: "
                         "L2, as neural-net-rs meant it before it had regularization_type (see "
                         "configs/README.md)",)
    explicit = Config.from_dict(LEGACY | {"regularization_type": "L1"})
    assert explicit.regularization_type == "L1" and explicit.notes == ()
    assert Config.from_dict({k: v for k, v in LEGACY.items()
                             if k != "regularization_rate"}).regularization_type is None
    resolved = Config.from_dict(cfg.to_dict())  # a run's config.json says L2 itself
    assert resolved.regularization_type == "L2" and resolved.notes == ()


def test_legacy_config_trains_with_l2_and_says_so(idx_dir: Path, tmp_path: Path) -> None:
    """The legacy file trains exactly as the same file with regularization_type L2 does, and
    not as one without regularization."""
    weights, notes = {}, {}
    for name, cfg in (("legacy", LEGACY), ("l2", LEGACY | {"regularization_type": "L2"}),
                      ("none", {k: v for k, v in LEGACY.items()
                                if k != "regularization_rate"})):
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg | {"regularization_rate": 0.05}
                                                          if name != "none" else cfg))
        result = runner.invoke(app, ["train", str(tmp_path / f"{name}.json"), "--data-dir",
                                     str(idx_dir), "--epochs", "1", "--quiet", "--run-dir",
                                     str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        notes[name] = [line for line in result.output.splitlines() if line.startswith("note:")]
        weights[name] = load_model(tmp_path / name / "model.safetensors").params[0]
    assert notes == {"legacy": [f"note: {tmp_path / 'legacy.json'}: regularization_rate 0.05 "
                                f"without regularization_type: L2, as neural-net-rs meant it "
                                f"before it had regularization_type (see configs/README.md)"],
                     "l2": [], "none": []}
    assert np.array_equal(weights["legacy"], weights["l2"])
    assert not np.allclose(weights["legacy"], weights["none"])


def test_confusion_table_fits_the_terminal() -> None:
    """Digits head their own columns; Fashion's names are too long for 80 columns, so its
    columns are numbered and each row says which name its number is; 26 classes do not fit."""
    from trainer.cli.display import confusion_table
    from trainer.core.metrics import report

    def headers(n: int, names: list[str], width: int = 80):
        table = confusion_table(report(np.eye(n, dtype=np.int64) * 100), names, width)
        return None if table is None else [str(c.header) for c in table.columns][1:]

    digits = [str(d) for d in range(10)]
    assert headers(10, digits) == digits
    assert headers(10, FASHION) == digits
    assert headers(10, FASHION, width=200) == FASHION
    assert headers(26, [f"{chr(65 + i)}/{chr(97 + i)}" for i in range(26)]) is None


def test_bench_and_sweep_pass_the_dataset_on(tmp_path: Path, monkeypatch) -> None:
    from trainer.cli import bench as cli_bench
    from trainer.cli import sweep as cli_sweep

    seen = {}

    def fake_run_bench(cfg, *, batch_sizes, targets, on_result, dataset, **_):
        seen["bench"] = dataset
        return {"results": [], "versions": {}, "fastest": {},
                "machine": {"cpu": {"model": "a CPU", "cores": 2, "simd": "AVX2"}}}

    def fake_run_sweep(settings, *_args, **_kwargs):
        seen["sweep"] = settings.dataset
        raise SystemExit(0)

    monkeypatch.setattr(cli_bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(cli_sweep, "run_sweep", fake_run_sweep)
    out = tmp_path / "b.json"
    result = runner.invoke(app, ["bench", "--dataset", "KMNIST", "--backends", "numpy",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"log_uniform": [0.001, 0.1]}}))
    result = runner.invoke(app, ["sweep", str(CONFIGS / "fashion.json"), "--space", str(space),
                                 "--trials", "1", "--dataset", "fashion-mnist",
                                 "--sweep-dir", str(tmp_path / "s")])
    assert seen == {"bench": "kmnist", "sweep": "fashion-mnist"}, result.output
    refused = runner.invoke(app, ["bench", "--dataset", "cifar", "--out", str(out)])
    assert refused.exit_code == 2 and "unknown dataset 'cifar'; choose one of" in refused.output


def test_a_batch_trains_on_the_dataset_named(publishers: str, tmp_path: Path) -> None:
    """--dataset reaches every run of a batch, worker processes included, and its resume."""
    group = tmp_path / "group"
    args = ["train", str(CONFIGS / "fashion.json"), "--dataset", "fashion-mnist", "--seeds",
            "2", "--epochs", "1", "--limit-train", "1000", "--run-dir", str(group), "-q"]
    trained = runner.invoke(app, [*args, "--workers", "2"])
    assert trained.exit_code == 0, trained.output
    for seed in (0, 1):
        run = group / f"fashion-seed{seed}"
        assert list(json.loads((run / "metrics.json").read_text())["per_class"]) == FASHION
        assert load_model(run / "model.safetensors").dataset == "fashion-mnist"
    again = runner.invoke(app, args)  # the same batch: kept, not trained on MNIST
    assert again.exit_code == 0, again.output
    assert again.output.count("(kept)") == 2


def test_a_full_disk_during_fetch_exits_1_and_says_so(publishers: str, tmp_path: Path,
                                                       monkeypatch) -> None:
    """No space left while the bytes arrive: exit 1 (a runtime failure, as `train` on a full
    disk), "the disk is full", no cache and no traceback; with room again the fetch works."""
    import errno
    import io

    import trainer.data.download

    class FullDisk(io.BytesIO):
        def write(self, _chunk) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer.data.download, "open", lambda *_a, **_k: FullDisk(),
                        raising=False)
    full = runner.invoke(app, ["data", "fetch", "--dataset", "fashion-mnist"])
    assert full.exit_code == 1, full.output
    message = " ".join(full.output.split())
    assert "the disk is full" in message and "Traceback" not in full.output
    assert "IncompleteDownload" not in message
    cache = tmp_path / "xdg" / "trainer"
    assert not (cache / "fashion-mnist").exists()
    monkeypatch.delattr(trainer.data.download, "open")  # room again
    again = runner.invoke(app, ["data", "fetch", "--dataset", "fashion-mnist"])
    assert again.exit_code == 0, again.output
    assert "1200 training and 300 test images" in again.output
    assert (cache / "fashion-mnist").is_dir()


@pytest.mark.parametrize("command", [["data", "info"], ["data", "fetch"], ["train"],
                                     ["sweep"], ["bench"]])
def test_an_empty_dataset_name_is_refused_not_mnist(command: list[str]) -> None:
    """`--dataset ""` (a script's unset variable) once trained on MNIST without a word."""
    result = runner.invoke(app, [*command, "--dataset", ""])
    assert result.exit_code == 2, result.output
    assert "give a dataset's name" in " ".join(result.output.split())
    assert "Traceback" not in result.output
