"""What a sweep is asked to do: the settings every worker of one sweep shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.core.config import Config
from trainer.sweep.space import Space

# seconds between a running trial's heartbeats (Optuna's RDB storage records them)
HEARTBEAT_SECONDS = 30


@dataclass(frozen=True)
class SweepSettings:
    config: Config  # the base config, overrides applied; it needs a validation_split
    space: Space
    trials: int  # run until the study holds this many finished trials
    sweep_dir: Path
    study: str
    storage: str | None = None  # an SQLAlchemy URL; default sqlite:///<sweep_dir>/study.db
    sampler: str = "tpe"
    seed: int = 0
    backend: str = "numpy"
    device: str | None = None
    data_dir: Path | None = None
    dataset: str = "mnist"  # datasets.py's name; with data_dir: how to read that folder
    limit_train: int | None = None
    timeout: float | None = None  # seconds after which no new trial starts
    workers: int = 1
    heartbeat: int = HEARTBEAT_SECONDS  # a RUNNING trial silent for 3x this is failed, retried
    max_retry: int = 3
    # the config best-full.json starts from: the base config with the sweep's budget (its
    # epochs, its validation split) taken back out; None: the same as `config`
    full_config: Config | None = None

    @property
    def url(self) -> str:
        return self.storage or f"sqlite:///{self.sweep_dir.resolve() / 'study.db'}"
