"""trainer: a fast, array-backend-agnostic trainer for MLPs on MNIST-like data."""

from trainer.api import LoadedRun, load_run, train
from trainer.core.config import Config, default_config
from trainer.data.dataset import Dataset, InputScaling, load_dataset
from trainer.errors import ConfigError, DataError, TrainerError
from trainer.run.results import Callbacks, Engine, EpochStats, TrainResult
from trainer.run.train import load_backend

__all__ = ["Callbacks", "Config", "ConfigError", "DataError", "Dataset", "Engine", "EpochStats",
           "InputScaling", "LoadedRun", "TrainResult", "TrainerError", "default_config",
           "load_backend", "load_dataset", "load_run", "train"]
