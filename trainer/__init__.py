"""trainer: a fast, array-backend-agnostic trainer for MLPs on MNIST-like data."""

from trainer.config import Config, default_config
from trainer.data import Dataset, InputScaling, load_dataset
from trainer.errors import ConfigError, DataError, TrainerError
from trainer.train import EpochStats, TrainResult, train

__all__ = ["Config", "ConfigError", "DataError", "Dataset", "EpochStats", "InputScaling",
           "TrainResult", "TrainerError", "default_config", "load_dataset", "train"]
