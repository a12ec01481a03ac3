"""trainer: a fast, array-backend-agnostic trainer for MLPs on MNIST-like data."""

from trainer.config import Config, default_config
from trainer.errors import ConfigError, DataError, TrainerError

__all__ = ["Config", "ConfigError", "DataError", "TrainerError", "default_config"]
