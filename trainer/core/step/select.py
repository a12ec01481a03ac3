"""Which step trains a config on a backend: the one place that chooses. The training loop
builds the step it names; `trainer train` prints its note; `trainer bench` asks it which
targets would time another backend's step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.backends import Backend, Kernels
from trainer.core.config import Config
from trainer.core.step.batch import BatchStep, PlainStep
from trainer.core.step.compiled import CompiledStep
from trainer.core.step.flat import FlatStep, VelocityStep
from trainer.core.step.fused import FusedStep, unsupported
from trainer.core.step.state import Step

Array = Any


@dataclass(frozen=True)
class Choice:
    """The step for a config on a backend, before it is built."""

    kind: str  # the step's kind: plain, flat, velocity, compiled or fused
    note: str  # one line for the CLI and the bench ("" where there is nothing to say)
    # why the backend's whole-step kernel does not train this config (it then trains with
    # NumPy's per-batch step), or None
    fallback: str | None
    build: Callable[[Sequence[Array], Sequence[Array]], Step]  # (weights, velocities) -> step


def select_step(config: Config, backend: Backend, fast: bool = True,
                prefetch: bool = False) -> Choice:
    """The step that trains `config` on `backend`: a compiled loop where the backend compiles
    whole steps (jax), its fused kernel where it has one that covers the config (numba), else
    the fastest per-batch step its kernels allow (make_step). `fast` False: the plain step, the
    reference; `prefetch`: gather the batches ahead in a thread where the backend can (a
    per-batch step on host arrays)."""
    xp = backend.xp
    if fast and backend.compiler is not None:
        compiler = backend.compiler
        return Choice(CompiledStep.kind, "whole steps compiled", None,
                      lambda p, v: CompiledStep(config, xp, p, v, compiler))
    why = unsupported(config) if fast and backend.fused is not None else None
    kernel = backend.fused(config.dtype) if fast and backend.fused and why is None else None
    if kernel is not None:
        return Choice(FusedStep.kind, "whole steps compiled", None,
                      lambda p, v: FusedStep(config, xp, p, v, kernel))
    kernels = backend.kernels if fast else None
    cls = batch_step_class(config, kernels)

    def build(params: Sequence[Array], velocities: Sequence[Array]) -> Step:
        step = make_step(config, xp, params, velocities, kernels)
        step.backend = backend
        step.prefetch = backend.kernels.prefetch if fast and prefetch else None
        return step
    return Choice(cls.kind, f"NumPy's step: {why}" if why else "", why, build)


def batch_step_class(config: Config, kernels: Kernels | None) -> type[BatchStep]:
    """The fastest per-batch step that `kernels` and the optimizer allow (None: the plain one):
    flat buffers need the backend's matmul and sum0; the velocity GEMM its gemm_acc, and plain
    momentum SGD (Nesterov's look-ahead needs the gradient itself)."""
    k = kernels or Kernels()
    if k.matmul is None or k.sum0 is None:
        return PlainStep
    if k.gemm_acc is not None and config.optimizer == "sgd" and not config.nesterov:
        return VelocityStep
    return FlatStep


def make_step(config: Config, xp: Any, params: Sequence[Array], velocities: Sequence[Array],
              kernels: Kernels | None = None) -> BatchStep:
    """batch_step_class's step, built (tests build each kind with kernels of their choice)."""
    return batch_step_class(config, kernels)(config, xp, params, velocities, kernels)
