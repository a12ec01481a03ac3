"""Hyper-parameter sweeps on Optuna: `run_sweep(SweepSettings(config, load_space(path, config),
trials, sweep_dir, study))`."""

from trainer.sweep.run import run_sweep
from trainer.sweep.settings import SweepSettings
from trainer.sweep.space import load_space

__all__ = ["SweepSettings", "load_space", "run_sweep"]
