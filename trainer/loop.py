"""The epoch loop of one training run, resumable: `train()` in train.py drives it."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backends import Backend
from trainer.augment import Shifter
from trainer.checkpoint import LoopState
from trainer.config import Config
from trainer.data import Dataset, InputScaling
from trainer.errors import ConfigError
from trainer.metrics import Report, confusion_matrix, report
from trainer.network import init_params, predict
from trainer.results import (
    DivergedError,
    EpochStats,
    Interrupted,
    RunHooks,
    StepInfo,
    TrainResult,
    host_value,
)
from trainer.schedule import learning_rate
from trainer.step import TrainStep

Array = Any
DEVICE_LOSS_CHECK = 50  # on a GPU, look at the loss every this many steps (a sync each time)
DIVERGED_CROSS_ENTROPY = 1000.0  # nats per image


class Run:
    """One training run: its data and network on the device, and where the loop is."""

    def __init__(self, config: Config, data: Dataset, be: Backend, fast: bool,
                 blas_threads: int | None, hooks: RunHooks, prefetch: bool = True) -> None:
        self.config, self.be, self.hooks = config, be, hooks
        self.xp, self.dtype = be.xp, getattr(be.xp, config.dtype)
        scaling = InputScaling.fit(data.train_images, config.input_scaling)
        self.classes = data.num_classes
        # children 0 and 1 are the streams of runs without augmentation or validation: adding
        # streams keeps every earlier result reproducible
        init_rng, shuffle, augment, split_rng = np.random.default_rng(config.seed).spawn(4)
        self.rngs = {"shuffle": shuffle, "augment": augment}
        train_idx, val_idx = split(config, len(data.train_labels), split_rng)
        self.n_train = len(train_idx)

        def on_device(images: np.ndarray, labels: np.ndarray) -> tuple[Array, Array]:
            return (be.asarray(scaling.apply(images, dtype=config.dtype)),
                    be.asarray(labels.astype(np.int64)))

        self.x_train, self.y_train = on_device(data.train_images[train_idx],
                                               data.train_labels[train_idx])
        self.x_val, self.y_val = on_device(data.train_images[val_idx],
                                           data.train_labels[val_idx])
        self.x_test, self.y_test = on_device(data.test_images, data.test_labels)

        host = init_params(config.sizes, config.activations, config.init, init_rng,
                           config.dtype)
        self.step_fn = TrainStep(config, self.xp, [be.asarray(p) for p in host],
                                 [be.asarray(np.zeros_like(p)) for p in host],
                                 be.kernels if fast else None)
        self.params = self.step_fn.params  # the step may have moved them into a flat buffer
        # a thread gathering the next batches' rows (host arrays only: backends/prefetch.py),
        # on a core the BLAS leaves free (competing with BLAS threads it costs more than it saves)
        spare_core = blas_threads is not None and blas_threads < (os.cpu_count() or 1)
        self.prefetch = be.kernels.get("prefetch") if fast and prefetch and spare_core else None
        self.shifter = None
        if config.augment.shift:
            blank = float(scaling.apply(np.zeros((1, 1, 1), np.uint8), dtype=np.float64)[0, 0])
            self.shifter = self.step_fn.augment = Shifter(
                self.xp, be.asarray, data.train_images.shape[1:3], config.augment.shift, blank,
                self.dtype)
        self.result = TrainResult(config, be.name, be.device_name, scaling, host,
                                  train_samples=self.n_train, blas_threads=blas_threads,
                                  validation_samples=len(val_idx))
        self.state = hooks.resume or LoopState()
        if hooks.resume is not None:
            self._restore(hooks.resume)
        self.best_params = [be.asarray(p) for p in self.state.best_params] or None
        self.start = time.perf_counter() - self.state.elapsed

    def _restore(self, state: LoopState) -> None:
        """Continue exactly where a checkpoint left off."""
        self.step_fn.restore(self.be.asarray, state.params, state.velocities, state.second,
                             state.global_step)
        for name, rng in self.rngs.items():
            rng.bit_generator.state = state.rng[name]
        self.result.history = [EpochStats(**h) for h in state.history]

    def epoch(self, epoch: int, on_step: Callable[[StepInfo], None] | None) -> EpochStats:
        """Train one epoch (or what is left of it after a resume); its figures."""
        config, xp, be, state = self.config, self.xp, self.be, self.state
        bs = config.batch_size
        if state.step == 0:  # a fresh epoch: draw its batch order and shifts
            state.perm = self.rngs["shuffle"].permutation(self.n_train)
            state.shift_ids = (self.shifter.draw(self.rngs["augment"], self.n_train)
                               if self.shifter else None)
            state.loss_sum = state.correct = state.epoch_seconds = 0.0
        t0 = time.perf_counter() - state.epoch_seconds
        perm = be.asarray(state.perm)
        if self.shifter is not None:
            self.shifter.use(state.shift_ids)
        steps = -(-self.n_train // bs)
        # on the CPU reading the loss every step costs nothing: the sums are kept on the host
        host_loss = be.device_name == "cpu"
        loss_sum: Array | float = state.loss_sum
        correct: Array | float = state.correct
        if not host_loss:
            loss_sum = xp.asarray(state.loss_sum, dtype=self.dtype, device=self.x_train.device)
            correct = xp.asarray(state.correct, dtype=self.dtype, device=self.x_train.device)
        # per image, the largest loss that is not divergence (see check_loss)
        limit = DIVERGED_CROSS_ENTROPY if config.loss == "cross_entropy" else math.inf
        constant_lr = (config.learning_rate if config.lr_schedule.type == "constant"
                       and not config.lr_schedule.warmup_epochs else None)
        hooks = self.hooks.stop_requested or self.hooks.checkpoint_every
        ahead = self.prefetch(self.x_train, state.perm, bs, state.step) if self.prefetch else None
        batches = iter(ahead) if ahead is not None else None
        try:
            for step in range(state.step, steps):
                lo, hi = step * bs, min(step * bs + bs, self.n_train)
                lr = constant_lr or learning_rate(config, epoch, step, steps)
                x = next(batches) if batches is not None else None
                loss, ok = self.step_fn(self.x_train, self.y_train, perm[lo:hi], lr, x)
                if host_loss:
                    value = float(loss)
                    loss_sum += value
                    correct += float(ok)
                else:  # a read waits for the device: every DEVICE_LOSS_CHECK steps only
                    loss_sum += loss
                    correct += ok
                    value = (float(be.to_numpy(loss)) if (step + 1) % DEVICE_LOSS_CHECK == 0
                             or step + 1 == steps else 0.0)
                if not (value - value == 0.0 and value <= limit * (hi - lo)):  # inf, nan, huge
                    check_loss(config, loss, hi - lo, be, epoch, step + 1, steps, lr, host_loss)
                if on_step is not None:
                    on_step(StepInfo(epoch, step + 1, steps, hi, be, loss_sum, correct))
                if hooks:
                    self._maybe_stop(epoch, step + 1, steps, loss_sum, correct, t0, hi, lr)
        finally:
            if ahead is not None:
                ahead.close()
        loss_mean = host_value(be, loss_sum) / self.n_train  # waits for the epoch's work
        seconds = time.perf_counter() - t0
        val, test = self._held_out()
        return EpochStats(epoch, loss_mean, host_value(be, correct) / self.n_train, test,
                          seconds, val, lr)

    def _maybe_stop(self, epoch: int, done: int, steps: int, loss_sum: Array | float,
                    correct: Array | float, t0: float, seen: int, lr: float) -> None:
        """Mid-epoch: checkpoint every N steps, and on a stop request checkpoint and stop."""
        hooks = self.hooks
        signal = hooks.stop_requested() if hooks.stop_requested else None
        every = hooks.checkpoint_every
        if hooks.checkpoint and done < steps and (
                signal or (every and self.step_fn.global_step % every == 0)):
            if not isinstance(loss_sum, float):  # on a device the loss is checked now and then:
                # a diverged run is reported, not checkpointed (and the sum is finite to save)
                check_loss(self.config, loss_sum, seen, self.be, epoch, done, steps, lr, False)
            hooks.checkpoint(self.snapshot(epoch, done, loss_sum, correct,
                                           time.perf_counter() - t0))
        if signal:
            raise Interrupted(signal, epoch, done)

    def _held_out(self) -> tuple[float | None, float | None]:
        """(validation, test) accuracy: the test set only shows progress without a split."""
        acts, be = self.config.activations, self.be
        if self.result.validation_samples:
            return evaluate(self.params, acts, self.x_val, self.y_val, self.classes,
                            be.to_numpy)[0].accuracy, None
        if not self.y_test.shape[0]:
            return None, None
        return None, evaluate(self.params, acts, self.x_test, self.y_test, self.classes,
                              be.to_numpy)[0].accuracy

    def end_epoch(self, stats: EpochStats, on_epoch: Callable[[EpochStats], None] | None
                  ) -> bool:
        """Record the epoch, keep the best weights, checkpoint; True when training should end."""
        config, state, hooks, epoch = self.config, self.state, self.hooks, stats.epoch
        self.result.history.append(stats)
        if stats.val_accuracy is not None and (state.best_accuracy is None
                                               or stats.val_accuracy > state.best_accuracy):
            state.best_accuracy, state.best_epoch = stats.val_accuracy, epoch
            self.best_params = [self.xp.asarray(p, copy=True) for p in self.params]
        state.step = 0
        stop_early = bool(state.best_epoch and config.early_stopping_patience
                          and epoch - state.best_epoch >= config.early_stopping_patience)
        if hooks.checkpoint:
            hooks.checkpoint(self.snapshot(epoch + 1, 0, None, None, 0.0))
        if on_epoch is not None:
            on_epoch(stats)
        signal = hooks.stop_requested() if hooks.stop_requested else None
        if signal and epoch < config.epochs and not stop_early:
            raise Interrupted(signal, epoch + 1, 0)
        self.result.stopped_early = stop_early
        return stop_early

    def snapshot(self, epoch: int, step: int, loss_sum: Array | float | None,
                 correct: Array | float | None, seconds: float) -> LoopState:
        """Everything needed to continue from here, on the host."""
        be, state = self.be, self.state
        p, v, s2 = self.step_fn.export(be.to_numpy)
        return LoopState(
            epoch=epoch, step=step, global_step=self.step_fn.global_step, params=p,
            velocities=v, second=s2, perm=state.perm if step else None,
            shift_ids=state.shift_ids if step else None,
            loss_sum=host_value(be, loss_sum) if step else 0.0,
            correct=host_value(be, correct) if step else 0.0, epoch_seconds=seconds,
            elapsed=time.perf_counter() - self.start,
            rng={k: r.bit_generator.state for k, r in self.rngs.items()},
            history=[dataclasses.asdict(h) for h in self.result.history],
            best_accuracy=state.best_accuracy, best_epoch=state.best_epoch,
            best_params=[np.array(be.to_numpy(b)) for b in self.best_params or []],
            run=self.hooks.run)

    def finish(self, on_test_chunk: Callable[[int, int], None] | None) -> TrainResult:
        """Keep the best epoch's weights if asked, evaluate, copy the weights to the host."""
        result, acts, be = self.result, self.config.activations, self.be
        result.total_seconds = time.perf_counter() - self.start
        if self.best_params is not None and self.config.restore_best_weights:
            for p, saved in zip(self.params, self.best_params, strict=True):
                p[...] = saved
            result.best_epoch = self.state.best_epoch
        result.train_accuracy = evaluate(self.params, acts, self.x_train, self.y_train,
                                         self.classes, be.to_numpy)[0].accuracy
        if self.y_test.shape[0]:
            result.test_report, result.test_predictions = evaluate(
                self.params, acts, self.x_test, self.y_test, self.classes, be.to_numpy,
                on_chunk=on_test_chunk)
        result.params = [np.array(be.to_numpy(p)) for p in self.params]  # copies, not views
        return result


def evaluate(params: Sequence[Array], activations: Sequence[str], x: Array, labels: Array,
             num_classes: int, to_numpy: Callable[[Array], Any],
             on_chunk: Callable[[int, int], None] | None = None) -> tuple[Report, np.ndarray]:
    """The report and the predictions for `x`: computed on the device, read back once each."""
    pred = predict(params, activations, x, on_chunk=on_chunk)
    cm = to_numpy(confusion_matrix(labels, pred, num_classes))
    return report(cm), np.asarray(to_numpy(pred)).astype(np.int64)


def check_loss(config: Config, loss: Array, n: int, be: Backend, epoch: int, step: int,
               steps: int, lr: float, every_step: bool) -> None:
    """Stop on a non-finite loss, or a cross-entropy no working network has (see below)."""
    value = float(be.to_numpy(loss))
    # A mean cross-entropy of 1000 nats means p(true class) < e^-1000 on average: the logits
    # are thousands apart, i.e. the weights have blown up (an untrained net is at ~ln 10 = 2.3)
    exploded = config.loss == "cross_entropy" and value / n > DIVERGED_CROSS_ENTROPY
    if math.isfinite(value) and not exploded:
        return
    where = f"step {step}/{steps}" if every_step else f"by step {step}/{steps}"
    what = f"{value}" if not math.isfinite(value) else f"{value / n:.3g} per image"
    raise DivergedError(
        f"training diverged in epoch {epoch}, {where}: the loss is {what} at learning rate "
        f"{lr:g}. Try a smaller learning_rate (or batch_size, since gradients are summed over "
        f"the batch), or \"loss_reduction\": \"mean\"", epoch, step)


def check_split(config: Config, n: int) -> None:
    if config.validation_size(n) >= n:
        raise ConfigError(f"validation_split {config.validation_split:g} leaves no training "
                          f"images out of {n}")


def split(config: Config, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices: a seeded random share held out, both in data order."""
    check_split(config, n)
    n_val = config.validation_size(n)
    if n_val == 0:
        return np.arange(n), np.arange(0)
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
