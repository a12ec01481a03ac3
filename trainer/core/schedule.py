"""Learning-rate schedules: the rate for a step, from the fraction of training done."""

from __future__ import annotations

import math

from trainer.core.config import Config


def learning_rate(config: Config, epoch: int, step: int, steps: int) -> float:
    """The rate for step `step` (0-based) of `steps` in epoch `epoch` (1-based).

    t counts the epochs done before this step (fractional). Warm-up rises linearly over the
    first `warmup_epochs` so that the first step uses a small, non-zero rate.
    """
    s, lr = config.lr_schedule, config.learning_rate
    t = (epoch - 1) + step / steps
    if s.type == "step":
        rate = lr * s.gamma ** math.floor(t / s.step_epochs)
    elif s.type == "exponential":
        rate = lr * s.gamma ** t
    elif s.type == "cosine":
        rate = s.min_lr + (lr - s.min_lr) * 0.5 * (1 + math.cos(math.pi * t / config.epochs))
    else:
        rate = lr
    if s.warmup_epochs and t < s.warmup_epochs:
        rate *= min(1.0, (t + 1 / steps) / s.warmup_epochs)
    return rate


def constant_rate(config: Config) -> float | None:
    """The learning rate if it never changes (no schedule, no warm-up), else None."""
    s = config.lr_schedule
    return config.learning_rate if s.type == "constant" and not s.warmup_epochs else None
