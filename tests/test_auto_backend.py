"""`--backend auto`: which backend the rule picks with backends present, absent or a GPU
faked (the availability check patched, never the rule), and what `trainer train` prints and
records when asked for it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run, write_config
from safetensors.numpy import load_file

from trainer import backends
from trainer.core.config import Config, default_config
from trainer.core.step import select_step
from trainer.errors import UsageError
from trainer.run import auto
from trainer.run.checkpoint import LATEST, PREVIOUS

NUMPY = backends.load("numpy")
# stand-ins that the rule can ask what they are: numba with a fused kernel (select_step asks
# the config's coverage of trainer/core/step/fused.py's `unsupported`), jax on the CPU or a GPU
FAKES = {
    "numba": dataclasses.replace(NUMPY, name="numba", fused=lambda dtype: object()),
    "jax": dataclasses.replace(NUMPY, name="jax"),
    "jax-gpu": dataclasses.replace(NUMPY, name="jax", on_host=False, device_name="Fake H200"),
    "cupy": dataclasses.replace(NUMPY, name="cupy", on_host=False, device_name="Fake H200"),
    "numpy": NUMPY,
}

MNIST_99_3 = Config.from_file(Path(__file__).parent.parent / "configs" / "mnist-99.3.json")
SMALL = default_config()  # 784-128-10: 101,632 weights
BIG = SMALL.replace(layers=[{"nodes": 784, "activation": "relu"},
                            {"nodes": 800, "activation": "softmax"}, {"nodes": 10}])
CONFIGS = {  # covered by today's kernel or not: the test asks select_step, not this table
    "default": SMALL, "big": BIG, "nesterov": SMALL.replace(nesterov=True),
    "dropout": BIG.replace(layers=[{"nodes": 784, "activation": "relu", "dropout": 0.2},
                                   {"nodes": 800, "activation": "softmax"}, {"nodes": 10}]),
    "adam": SMALL.replace(optimizer="adam"), "l2": BIG.replace(regularization_type="l2",
                                                              regularization_rate=1e-4),
    "mnist-99.3": MNIST_99_3, "float64": SMALL.replace(dtype="float64"),
    # a squared-error loss: off the list for the kernel, so some configs stay uncovered
    "mse": SMALL.replace(loss="mse"), "mse-big": BIG.replace(loss="mse"),
}


def present(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Only `names` load here (FAKES' keys; jax-gpu is jax on a GPU)."""
    def load(name: str, device: str | None = None) -> backends.Backend:
        for key in names:
            if key.split("-")[0] == name:
                return FAKES[key]
        raise ImportError(f"{name} is not installed (faked)")
    monkeypatch.setattr(backends, "load", load)


def test_a_gpu_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    present(monkeypatch, "cupy", "numba", "jax", "numpy")
    for cfg in (SMALL, MNIST_99_3):
        assert auto.choose_backend(cfg) == ("cupy", "a CUDA GPU is present (Fake H200)")
    present(monkeypatch, "jax-gpu", "numpy")  # no cupy, jax's default device a GPU
    name, why = auto.choose_backend(SMALL)
    assert name == "jax" and "jax runs on the GPU (Fake H200)" in why


@pytest.mark.parametrize("key", list(CONFIGS))
def test_numba_where_select_step_says_its_kernel_covers_the_config(
        monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    cfg = CONFIGS[key]
    present(monkeypatch, "numba", "jax", "numpy")
    covered = select_step(cfg, FAKES["numba"]).fallback is None
    name, why = auto.choose_backend(cfg)
    assert (name == "numba") == covered, why
    if not covered:  # the others by size, and the kernel's reason said
        assert name == ("jax" if auto.weights(cfg) >= auto.JAX_MIN_WEIGHTS else "numpy")
        assert select_step(cfg, FAKES["numba"]).fallback in why


def test_without_numba_jax_from_its_size_on_else_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    present(monkeypatch, "jax", "numpy")
    assert auto.weights(SMALL) == 784 * 128 + 128 * 10 < auto.JAX_MIN_WEIGHTS
    assert auto.weights(BIG) == 784 * 800 + 800 * 10 >= auto.JAX_MIN_WEIGHTS
    assert auto.choose_backend(SMALL)[0] == "numpy"
    name, why = auto.choose_backend(BIG)
    assert name == "jax" and why.startswith("numba does not load here; 635,200 weights")
    present(monkeypatch, "numpy")
    assert auto.choose_backend(BIG) == ("numpy", "numba does not load here; jax does not load "
                                                 "here")


def test_a_batch_takes_its_largest_networks_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    present(monkeypatch, "jax", "numpy")
    name, why = auto.choose_for_all([SMALL.replace(epochs=100), BIG.replace(epochs=1)])
    assert (name, why.endswith("(for the batch's largest network)")) == ("numpy", True)
    assert auto.choose_for_all([SMALL, BIG])[0] == "jax"  # 30 epochs each: BIG's work


def test_names_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto.resolve_backend("torch", [SMALL]) == ("torch", None)  # named: not checked here
    with pytest.raises(UsageError, match="unknown backend 'nonesuch'; choose one of numpy.*, "
                                         "or auto"):
        auto.resolve_backend("nonesuch", [SMALL])
    with pytest.raises(UsageError, match="a cluster's workers load theirs: name one"):
        auto.resolve_backend("auto", [SMALL], on_cluster=True)
    with pytest.raises(UsageError, match=r"choose one of numpy, .*, jax$"):  # not auto there
        auto.resolve_backend("nonesuch", [SMALL], on_cluster=True)
    present(monkeypatch)  # nothing loads on this device
    with pytest.raises(UsageError, match="no backend loads on device 'cuda:7'"):
        auto.choose_backend(SMALL, "cuda:7")


# --- the CLI ---------------------------------------------------------------------------------

def _absent(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """`names` do not load here; the others load as they really do."""
    real = backends.load

    def load(name: str, device: str | None = None) -> backends.Backend:
        if name in names:
            raise ImportError(f"{name} is not installed (faked)")
        return real(name, device)
    monkeypatch.setattr(backends, "load", load)


def test_train_auto_prints_its_pick_and_records_the_backend_used(
        idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _absent(monkeypatch, "cupy", "numba", "jax")
    run_dir = tmp_path / "run"
    result = run("train", write_config(tmp_path, epochs=1), "--data-dir", idx_dir, "--run-dir",
                 run_dir, "--backend", "auto", "-q")
    assert result.exit_code == 0, result.output
    line = ("--backend auto: numpy (numba does not load here; 101,632 weights: NumPy's step "
            f"beats jax's below {auto.JAX_MIN_WEIGHTS:,})")
    assert line in result.output.splitlines()
    assert json.loads((run_dir / "metrics.json").read_text())["backend"] == "numpy"
    # numpy stays the default, and says nothing of auto
    result = run("train", write_config(tmp_path, epochs=1), "--data-dir", idx_dir, "--run-dir",
                 tmp_path / "plain", "-q")
    assert result.exit_code == 0 and "--backend auto" not in result.output
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["backend"] == "numpy"
    result = run("train", "--backend", "nonesuch", "--data-dir", idx_dir)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "choose one of numpy, numba" in result.output and "or auto" in result.output


@pytest.mark.slow
def test_an_auto_run_resumes_on_its_own_backend(idx_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint records numba, not auto; auto resumes it there, bit for bit; where numba
    no longer loads, auto picks again and says the bits change."""
    from conftest import _load_or_skip

    _load_or_skip("numba")
    _absent(monkeypatch, "cupy")
    straight = tmp_path / "straight"
    args = ["--data-dir", idx_dir, "--backend", "auto"]
    result = run("train", write_config(tmp_path, batch_size=32), *args, "--run-dir", straight,
                 "--keep-checkpoints")
    assert result.exit_code == 0, result.output
    assert "--backend auto: numba (its fused kernel covers this config)" in result.output
    assert "numba (cpu; whole steps compiled)" in result.output
    assert json.loads((straight / "metrics.json").read_text())["backend"] == "numba"
    for kept in (True, False):
        cut = tmp_path / f"cut-{kept}"
        cut.mkdir()  # the run after epoch 1: its checkpoint before the last
        (cut / LATEST).write_bytes((straight / PREVIOUS).read_bytes())
        if not kept:
            _absent(monkeypatch, "cupy", "numba")
        resumed = run("train", "--resume", cut, *args)
        assert resumed.exit_code == 0, resumed.output
        text = " ".join(resumed.output.split())
        same = all(np.array_equal(a, b) for a, b in zip(
            load_file(straight / "model.safetensors").values(),
            load_file(cut / "model.safetensors").values(), strict=True))
        assert same == kept
        assert ("--backend auto: numba (the run's own: resumed on it, the run stays bit for "
                "bit)" in text) == kept
        assert ("trained on numba so far; resumed on numpy, it will not be bit for bit"
                in text) != kept
        assert json.loads((cut / "metrics.json").read_text())["backend"] == (
            "numba" if kept else "numpy")


def test_a_batch_with_auto_records_its_pick_and_resumes(
        idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _absent(monkeypatch, "cupy", "numba", "jax")
    group = tmp_path / "group"
    cmd = ("train", write_config(tmp_path, epochs=1), "--seeds", "2", "--data-dir", idx_dir,
           "--run-dir", group, "--backend", "auto", "-q")
    result = run(*cmd)
    assert result.exit_code == 0, result.output
    assert "--backend auto: numpy (numba does not load here" in result.output
    assert json.loads((group / "group.json").read_text())["backend"] == "numpy"
    for seed in (0, 1):
        metrics = json.loads((group / f"tiny-seed{seed}" / "metrics.json").read_text())
        assert metrics["backend"] == "numpy"
    again = run(*cmd)  # the same command: the same pick, the same group, nothing retrained
    assert again.exit_code == 0 and "Resuming the batch" in again.output


def test_a_sweep_with_auto_trains_its_trials_on_the_pick(
        idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _absent(monkeypatch, "cupy", "numba", "jax")
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"log_uniform": [0.003, 0.1]}}))
    result = run("sweep", write_config(tmp_path, epochs=1), "--space", space, "--trials", 1,
                 "--data-dir", idx_dir, "--sweep-dir", tmp_path / "sw", "--backend", "auto")
    assert result.exit_code == 0, result.output
    assert "--backend auto: numpy (numba does not load here" in result.output
    metrics = json.loads((tmp_path / "sw" / "trials" / "0" / "metrics.json").read_text())
    assert metrics["backend"] == "numpy"
    result = run("sweep", write_config(tmp_path), "--space", space, "--trials", 1,
                 "--backend", "auto", "--cluster", "tcp://127.0.0.1:9")
    assert result.exit_code == 2 and "a cluster's workers load theirs" in result.output


def test_the_python_api_takes_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import make_dataset

    import trainer

    _absent(monkeypatch, "cupy", "numba", "jax")
    cfg = Config.from_dict({"layers": [{"nodes": 20, "activation": "softmax"}, {"nodes": 4}],
                            "learning_rate": 0.1, "epochs": 1, "batch_size": 8})
    result = trainer.train(cfg, make_dataset(n_train=64, n_test=16, classes=4), "auto")
    assert result.backend == "numpy"


def test_a_name_it_does_not_know_is_not_available() -> None:
    assert auto.available("nonesuch") is None  # a checkpoint's recorded backend, say
    assert auto.available("numpy") is not None


def test_a_resume_asked_for_auto_stays_on_the_runs_own_backend(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast, without training: the slow test above trains and compares the bits."""
    from types import SimpleNamespace

    from trainer.cli.train import _resumed_backend

    present(monkeypatch, "numba", "jax", "numpy")
    on_numpy = SimpleNamespace(run={"backend": "numpy"})  # a checkpoint's record
    assert _resumed_backend("auto", on_numpy, SMALL, None) == (
        "numpy", "the run's own: resumed on it, the run stays bit for bit")
    assert _resumed_backend("auto", None, SMALL, None)[0] == "numba"  # a new run: the rule
    assert _resumed_backend(None, on_numpy, SMALL, None) == ("numpy", None)
    present(monkeypatch, "numpy")  # its own no longer loads: picked again
    on_numba = SimpleNamespace(run={"backend": "numba"})
    assert _resumed_backend("auto", on_numba, SMALL, None)[0] == "numpy"
