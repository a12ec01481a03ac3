"""What the tests share: the CLI runner, isolation from the user's files, the configs and
data the tests build on, and a training process watched from outside. Test modules import from
here (and from conftest's fixtures), never from each other."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import make_dataset
from typer.testing import CliRunner, Result

from trainer import backends
from trainer.cli.app import app
from trainer.core.config import Config, default_config
from trainer.core.step import select_step
from trainer.data.dataset import Dataset
from trainer.run.checkpoint import LATEST

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


# --- the CLI ------------------------------------------------------------------------------------

def run(*args: object, input: str | None = None, width: int | None = None) -> Result:
    """`trainer ARGS...` in this process (CliRunner): its exit code and output."""
    return runner.invoke(app, [str(a) for a in args], input=input, terminal_width=width)


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's real cache, data dir or mirror."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TRAINER_DATA_DIR", raising=False)
    monkeypatch.delenv("TRAINER_MIRROR", raising=False)


def write_config(tmp_path: Path, name: str = "tiny", **changes) -> Path:
    """The default network as `name`.json in tmp_path, 2 epochs at batch 16, with `changes`."""
    cfg = default_config().to_dict() | {"epochs": 2, "batch_size": 16} | changes
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def skip_if_numpys_step(backend: backends.Backend, config: Config) -> None:
    """Skip a comparison with numpy where `backend` trains `config` with NumPy's own step:
    numba does, for the configs its kernel does not cover (test_numba_step checks that they
    route there), and NumPy against itself proves nothing."""
    why = select_step(config, backend).fallback
    if why is not None:
        pytest.skip(f"{backend.name} trains this config with NumPy's step: {why}")


# --- configs: a tiny network for the step's reference, and the recipes of resumable runs -------

VARIANTS = {
    "sgd": {},
    "nesterov": {"nesterov": True},
    "l2": {"regularization_type": "L2", "regularization_rate": 0.01},
    "l1": {"regularization_type": "L1", "regularization_rate": 0.01},
    "mse-mean": {"loss": "mse", "loss_reduction": "mean",
                 "layers": [{"nodes": 6, "activation": "relu"}, {"nodes": 5, "activation": "tanh"},
                            {"nodes": 3, "activation": "sigmoid"}, {"nodes": 4}]},
    # no in-place derivative kernel for leaky ReLU: the generic backward takes over
    "leaky-identity": {"layers": [{"nodes": 6, "activation": "leaky_relu"},
                                  {"nodes": 5, "activation": "identity"},
                                  {"nodes": 3, "activation": "softmax"}, {"nodes": 4}]},
    "dropout": {"layers": [{"nodes": 6, "activation": "sigmoid", "dropout": 0.2},
                           {"nodes": 5, "activation": "relu", "dropout": 0.5},
                           {"nodes": 3, "activation": "softmax", "dropout": 0.3}, {"nodes": 4}]},
}


def step_config(**changes) -> Config:
    """6-5-3-4, sigmoid, tanh, softmax, float64: test_step's reference network (10 rows)."""
    return Config.from_dict({
        "layers": [{"nodes": 6, "activation": "Sigmoid"}, {"nodes": 5, "activation": "Tanh"},
                   {"nodes": 3, "activation": "Softmax"}, {"nodes": 4}],
        "learning_rate": 0.05, "momentum": 0.7, "batch_size": 4, "epochs": 1,
        "dtype": "float64"} | changes)


LAYERS = [{"nodes": 6, "activation": "tanh"}, {"nodes": 5, "activation": "softmax"},
          {"nodes": 3}]


def recipe_config(**changes) -> Config:
    return Config.from_dict({"layers": LAYERS, "learning_rate": 0.01, "epochs": 1,
                             "batch_size": 4, "dtype": "float64"} | changes)


def covered_config(**changes) -> Config:
    """A network the kernel covers, on make_dataset's 4x5 images."""
    return Config.from_dict({
        "layers": [{"nodes": 20, "activation": "tanh"}, {"nodes": 16, "activation": "relu"},
                   {"nodes": 12, "activation": "sigmoid"}, {"nodes": 8, "activation": "softmax"},
                   {"nodes": 4}],
        "learning_rate": 0.01, "momentum": 0.9, "batch_size": 16, "epochs": 2,
        "dtype": "float64"} | changes)


RECIPES = {
    "sgd-dropout-shift-val": {"momentum": 0.9, "augment": {"shift": 1},
                              "validation_split": 0.2},
    "sgd-elastic-shift-val": {"momentum": 0.9, "validation_split": 0.2, "augment": {
        "shift": 1, "elastic_alpha": 4.0, "elastic_sigma": 1.5, "rotate": 8.0, "scale": 0.1}},
    "adam": {"optimizer": "adam", "learning_rate": 0.003,
             "lr_schedule": {"type": "cosine", "warmup_epochs": 1}},
}


def resume_config(recipe: str, epochs: int = 4) -> Config:
    return Config.from_dict({
        "layers": [{"nodes": 36, "activation": "relu", "dropout": 0.1},
                   {"nodes": 12, "activation": "softmax", "dropout": 0.2}, {"nodes": 4}],
        "learning_rate": 0.01, "batch_size": 16, "epochs": epochs} | RECIPES[recipe])


def resume_data() -> Dataset:
    return make_dataset(n_train=200, n_test=50, shape=(6, 6), classes=4, seed=5)


# --- a training process, watched from outside ------------------------------------------------

def train_until_checkpointed(cmd: list[str], run_dir: Path,
                             wait: float = 60) -> subprocess.Popen:
    """The training process `cmd`, started, once its run directory holds a checkpoint (or after
    `wait` seconds): the moment the signal tests interrupt it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + wait
    while not (run_dir / LATEST).exists() and time.time() < deadline:
        time.sleep(0.05)
    return proc
