"""The epoch loop of one training run, resumable: `train()` in train.py drives it."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import numpy as np

from trainer.backends import Backend
from trainer.core.augment import Shifter
from trainer.core.config import Config
from trainer.core.elastic import ElasticWarp
from trainer.core.losses import diverged
from trainer.core.metrics import evaluate
from trainer.core.network import init_params
from trainer.core.schedule import constant_rate, learning_rate
from trainer.core.step import Step, select_step
from trainer.core.step.sums import ReadSums, RunningSums
from trainer.data.dataset import Dataset, InputScaling, split
from trainer.run.checkpoint import LoopState
from trainer.run.results import (
    Callbacks,
    DivergedError,
    Engine,
    EpochStats,
    Interrupted,
    StepInfo,
    TrainResult,
)

Array = Any


class Run:
    """One training run: its data and network on the device, and where the loop is."""

    def __init__(self, config: Config, data: Dataset, backend: Backend, engine: Engine,
                 blas_threads: int | None, callbacks: Callbacks,
                 resume: LoopState | None) -> None:
        self.config, self.backend, self.callbacks = config, backend, callbacks
        self.xp, self.dtype = backend.xp, getattr(backend.xp, config.dtype)
        scaling = InputScaling.fit(data.train_images, config.input_scaling)
        self.classes = data.num_classes
        # children 0 and 1 are the streams of runs without augmentation or validation: adding
        # streams keeps every earlier result reproducible
        init_rng, shuffle, augment, split_rng = np.random.default_rng(config.seed).spawn(4)
        self.rngs = {"shuffle": shuffle, "augment": augment}
        train_idx, val_idx = split(config, len(data.train_labels), split_rng)
        self.n_train = len(train_idx)
        self._put_data(data, scaling, train_idx, val_idx)
        host = init_params(config.sizes, config.activations, config.init, init_rng,
                           config.dtype)
        # a thread gathering the next batches' rows, on a core the BLAS leaves free (competing
        # with BLAS threads it costs more than it saves)
        spare_core = blas_threads is not None and blas_threads < (os.cpu_count() or 1)
        choice = select_step(config, backend, engine.fast, engine.prefetch and spare_core)
        self.step: Step = choice.build([backend.asarray(p) for p in host],
                                       [backend.asarray(np.zeros_like(p)) for p in host])
        self.params = self.step.params  # the step may have moved them into a flat buffer
        self._augmentations(data, scaling, engine.fast)
        self.step.augment_with(self.warp, self.shifter)
        self.result = TrainResult(config, backend.name, backend.device_name, scaling, host,
                                  train_samples=self.n_train, blas_threads=blas_threads,
                                  validation_samples=len(val_idx))
        self.state = resume or LoopState()
        if resume is not None:
            self._restore(resume)
        self.best_params = [backend.asarray(p) for p in self.state.best_params] or None
        self.start = time.perf_counter() - self.state.elapsed
        # the constant rate, looked up once (None: the schedule says per step)
        self.constant_lr = constant_rate(config)

    def _put_data(self, data: Dataset, scaling: InputScaling, train_idx: np.ndarray,
                  val_idx: np.ndarray) -> None:
        """The training, validation and test images, scaled, and their labels on the device."""
        def on_device(images: np.ndarray, labels: np.ndarray) -> tuple[Array, Array]:
            return (self.backend.asarray(scaling.apply(images, dtype=self.config.dtype)),
                    self.backend.asarray(labels.astype(np.int64)))

        self.x_train, self.y_train = on_device(data.train_images[train_idx],
                                               data.train_labels[train_idx])
        self.x_val, self.y_val = on_device(data.train_images[val_idx],
                                           data.train_labels[val_idx])
        self.x_test, self.y_test = on_device(data.test_images, data.test_labels)

    def _augmentations(self, data: Dataset, scaling: InputScaling, fast: bool) -> None:
        """The config's elastic warp and shifts (None where it has none)."""
        config, backend = self.config, self.backend
        self.shifter: Shifter | None = None
        self.warp: ElasticWarp | None = None
        aug = config.augment
        blank = float(scaling.apply(np.zeros((1, 1, 1), np.uint8), dtype=np.float64)[0, 0])
        if aug.warps:  # warped first, then shifted
            self.warp = ElasticWarp(
                self.xp, backend.asarray, data.image_shape, alpha=aug.elastic_alpha,
                sigma=aug.elastic_sigma, rotate=aug.rotate, scale=aug.scale, background=blank,
                seed=config.seed, dtype=self.dtype,
                hash_kernel=backend.kernels.hash32 if fast else None,
                kernel=backend.kernels.elastic if fast else None)
        if aug.shift:
            self.shifter = Shifter(self.xp, backend.asarray, data.image_shape, aug.shift, blank,
                                   self.dtype, kernel=backend.kernels.shift if fast else None)

    def _restore(self, state: LoopState) -> None:
        """Continue exactly where a checkpoint left off."""
        self.step.restore(self.backend.asarray, state.params, state.velocities, state.second,
                          state.global_step)
        for name, rng in self.rngs.items():
            rng.bit_generator.state = state.rng[name]
        self.result.history = [EpochStats(**h) for h in state.history]

    def epoch(self, epoch: int) -> EpochStats:
        """Train one epoch (or what is left of it after a resume); its figures."""
        config, backend, state = self.config, self.backend, self.state
        size = config.batch_size
        if state.step == 0:  # a fresh epoch: draw its batch order and shifts
            state.perm = self.rngs["shuffle"].permutation(self.n_train)
            state.shift_ids = (self.shifter.draw(self.rngs["augment"], self.n_train)
                               if self.shifter else None)
            state.loss_sum = state.correct = state.epoch_seconds = 0.0
        t0 = time.perf_counter() - state.epoch_seconds
        perm = backend.asarray(state.perm)
        if self.shifter is not None:
            self.shifter.use(state.shift_ids)
        if self.warp is not None:  # its fields follow from (seed, epoch, image): nothing to save
            self.warp.use(epoch)
        steps = -(-self.n_train // size)
        loss_sum, correct_sum, lr = self._train(epoch, steps, perm, t0)
        backend.synchronize()  # the epoch's time includes all of its work on a device
        seconds = time.perf_counter() - t0
        val, test = self._held_out()
        return EpochStats(epoch, loss_sum / self.n_train, correct_sum / self.n_train, test,
                          seconds, val, lr)

    def _train(self, epoch: int, steps: int, perm: Array, t0: float
               ) -> tuple[float, float, float]:
        """The epoch's steps (from the one a resume starts at), in stretches of at most
        step.stretch steps (one for a per-batch step), cut where a checkpoint is due and where
        the partial last batch starts; between them the bars move, a stop request is heard and
        the loss is looked at. Returns the epoch's summed loss, correct count and last rate."""
        config, state, callbacks, step = self.config, self.state, self.callbacks, self.step
        size, every, on_step = config.batch_size, callbacks.checkpoint_every, callbacks.on_step
        lrs = [self.constant_lr or learning_rate(config, epoch, s, steps) for s in range(steps)]
        step.begin_epoch(self.x_train, self.y_train, perm, lrs, state.step, state.loss_sum,
                         state.correct)
        full = self.n_train // size  # steps on a full batch; the last, partial one alone
        mid_epoch = callbacks.stop_requested is not None or bool(every)
        done = state.step
        try:
            while done < steps:
                count = min(step.stretch, (full if done < full else steps) - done)
                if every:  # end on the step a checkpoint is due after
                    count = min(count, every - step.global_step % every)
                broke = step.run(done, count)
                if broke is not None:
                    n = min(size, self.n_train - broke.step * size)
                    raise self._diverged(broke.loss, n, epoch, broke.step + 1, steps,
                                         lrs[broke.step], step.sums.every_step)
                done += count
                if on_step is not None or mid_epoch:
                    seen = min(done * size, self.n_train)
                    if on_step is not None:
                        on_step(StepInfo(epoch, done, steps, seen, step.sums))
                    if mid_epoch:
                        self._maybe_stop(epoch, done, steps, step.sums, t0, seen, lrs[done - 1])
        finally:
            step.end_epoch()
        return (*step.sums.values(), lrs[-1])

    def _diverged(self, value: float, n: int, epoch: int, step: int, steps: int, lr: float,
                  every_step: bool) -> DivergedError:
        where = f"step {step}/{steps}" if every_step else f"by step {step}/{steps}"
        what = f"{value}" if not math.isfinite(value) else f"{value / n:.3g} per image"
        return DivergedError(
            f"training diverged in epoch {epoch}, {where}: the loss is {what} at learning rate "
            f"{lr:g}. Try a smaller learning_rate (or batch_size, since gradients are summed "
            f"over the batch), or \"loss_reduction\": \"mean\"", epoch, step)

    def _maybe_stop(self, epoch: int, done: int, steps: int, sums: RunningSums | ReadSums,
                    t0: float, seen: int, lr: float) -> None:
        """Mid-epoch: checkpoint every N steps, and on a stop request checkpoint and stop."""
        callbacks = self.callbacks
        signal = callbacks.stop_requested() if callbacks.stop_requested else None
        every = callbacks.checkpoint_every
        if callbacks.checkpoint and done < steps and (
                signal or (every and self.step.global_step % every == 0)):
            loss_sum, correct = sums.values()
            # on a device the loss is looked at now and then: a diverged run is reported, not
            # checkpointed (and the sum saved is finite)
            if not sums.every_step and diverged(loss_sum / seen, self.config.loss):
                raise self._diverged(loss_sum, seen, epoch, done, steps, lr, False)
            callbacks.checkpoint(self.snapshot(epoch, done, loss_sum, correct,
                                               time.perf_counter() - t0))
        # after the epoch's last step the stop waits for end_epoch, which checkpoints first:
        # raising here would promise a checkpoint that was never written
        if signal and done < steps:
            raise Interrupted(signal, epoch, done)

    def _held_out(self) -> tuple[float | None, float | None]:
        """(validation, test) accuracy: the test set only shows progress without a split."""
        acts, to_numpy = self.config.activations, self.backend.to_numpy
        if self.result.validation_samples:
            return evaluate(self.params, acts, self.x_val, self.y_val, self.classes,
                            to_numpy)[0].accuracy, None
        if not self.y_test.shape[0]:
            return None, None
        return None, evaluate(self.params, acts, self.x_test, self.y_test, self.classes,
                              to_numpy)[0].accuracy

    def end_epoch(self, stats: EpochStats) -> bool:
        """Record the epoch, keep the best weights, checkpoint; True when training should end."""
        config, state, callbacks, epoch = self.config, self.state, self.callbacks, stats.epoch
        self.result.history.append(stats)
        if stats.val_accuracy is not None and (state.best_accuracy is None
                                               or stats.val_accuracy > state.best_accuracy):
            state.best_accuracy, state.best_epoch = stats.val_accuracy, epoch
            self.best_params = [self.xp.asarray(p, copy=True) for p in self.params]
        state.step = 0
        stop_early = bool(state.best_epoch and config.early_stopping_patience
                          and epoch - state.best_epoch >= config.early_stopping_patience)
        if callbacks.checkpoint:
            callbacks.checkpoint(self.snapshot(epoch + 1, 0, 0.0, 0.0, 0.0))
        if callbacks.on_epoch is not None:
            callbacks.on_epoch(stats)
        signal = callbacks.stop_requested() if callbacks.stop_requested else None
        if signal and epoch < config.epochs and not stop_early:
            raise Interrupted(signal, epoch + 1, 0)
        self.result.stopped_early = stop_early
        return stop_early

    def snapshot(self, epoch: int, step: int, loss_sum: float, correct: float,
                 seconds: float) -> LoopState:
        """Everything needed to continue from here, on the host."""
        backend, state = self.backend, self.state
        params, velocities, second = self.step.export(backend.to_numpy)
        return LoopState(
            epoch=epoch, step=step, global_step=self.step.global_step, params=params,
            velocities=velocities, second=second, perm=state.perm if step else None,
            shift_ids=state.shift_ids if step else None, loss_sum=loss_sum if step else 0.0,
            correct=correct if step else 0.0, epoch_seconds=seconds,
            elapsed=time.perf_counter() - self.start,
            rng={k: r.bit_generator.state for k, r in self.rngs.items()},
            history=[dataclasses.asdict(h) for h in self.result.history],
            best_accuracy=state.best_accuracy, best_epoch=state.best_epoch,
            best_params=[np.array(backend.to_numpy(b)) for b in self.best_params or []])

    def finish(self) -> TrainResult:
        """Keep the best epoch's weights if asked, evaluate, copy the weights to the host."""
        result, acts, to_numpy = self.result, self.config.activations, self.backend.to_numpy
        result.total_seconds = time.perf_counter() - self.start
        if self.best_params is not None and self.config.restore_best_weights:
            self.step.load_params(self.best_params)
            result.best_epoch = self.state.best_epoch
        result.train_accuracy = evaluate(self.params, acts, self.x_train, self.y_train,
                                         self.classes, to_numpy)[0].accuracy
        if self.y_test.shape[0]:
            result.test_report, result.test_predictions = evaluate(
                self.params, acts, self.x_test, self.y_test, self.classes, to_numpy,
                on_chunk=self.callbacks.on_test_chunk)
        result.params = [np.array(to_numpy(p)) for p in self.params]  # copies, not views
        return result
