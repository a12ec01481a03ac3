"""`--backend auto`: the fastest backend installed here that trains a config, by a small rule
measured with `trainer bench` (BENCHMARKS.md, "--backend auto: the rule and its numbers")."""

from __future__ import annotations

from collections.abc import Sequence

from trainer import backends
from trainer.backends import Backend
from trainer.core.config import Config
from trainer.core.step import select_step
from trainer.core.step.fused import FusedStep
from trainer.errors import UsageError

AUTO = "auto"
# From this many weights up jax's compiled step beats NumPy's on the CPU (0.52-0.98x at 317,600
# to 1.3 million); below, they are level or NumPy is ahead (0.89-1.22x at 101,632-234,752),
# and NumPy neither compiles nor takes twice the memory: BENCHMARKS.md's auto table
JAX_MIN_WEIGHTS = 300_000


def available(name: str, device: str | None = None) -> Backend | None:
    """Backend `name` on `device` if it loads here, else None: auto's availability check (a
    name it does not know, read from a checkpoint, does not load either)."""
    try:
        return backends.load(name, device)
    except (ImportError, ValueError):
        return None


def weights(config: Config) -> int:
    """The network's weight count (biases left out): the size the rule reads."""
    sizes = config.sizes
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def choose_backend(config: Config, device: str | None = None) -> tuple[str, str]:
    """The backend auto picks for `config` on `device`, and why, in a few words: cupy where it
    loads (a CUDA GPU), numba where its fused kernel covers the config (select_step says so),
    jax on a GPU or for a network of JAX_MIN_WEIGHTS weights or more, else numpy."""
    gpu = available("cupy", device)
    if gpu is not None:
        return "cupy", f"a CUDA GPU is present ({gpu.device_name})"
    numba = available("numba", device)
    if numba is not None:
        choice = select_step(config, numba)
        if choice.fallback is None and choice.kind == FusedStep.kind:
            return "numba", "its fused kernel covers this config"
        numba_note = "numba's fused kernel does not cover it: " + (
            choice.fallback or f"it has none for {config.dtype}")
    else:
        numba_note = "numba does not load here"
    n = weights(config)
    jax = available("jax", device)
    if jax is not None and not jax.on_host:
        return "jax", f"{numba_note}; jax runs on the GPU ({jax.device_name})"
    big = n >= JAX_MIN_WEIGHTS
    if jax is not None and big:
        return "jax", f"{numba_note}; {n:,} weights: jax's compiled step beats NumPy's " \
                      f"from {JAX_MIN_WEIGHTS:,}"
    if available("numpy", device) is None:
        raise UsageError(f"--backend auto: no backend loads on device {device!r}")
    why = (f"{n:,} weights: NumPy's step beats jax's below {JAX_MIN_WEIGHTS:,}" if not big
           else "jax does not load here")
    return "numpy", f"{numba_note}; {why}"


def choose_for_all(configs: Sequence[Config], device: str | None = None) -> tuple[str, str]:
    """One backend for several configs (a batch): the choice for the one with the most
    weight updates to make (weights x epochs), whose runs take longest."""
    largest = max(configs, key=lambda c: weights(c) * c.epochs)
    name, why = choose_backend(largest, device)
    if len(configs) > 1 and any(choose_backend(c, device)[0] != name for c in configs):
        why += " (for the batch's largest network)"
    return name, why


def resolve_backend(name: str, configs: Sequence[Config], device: str | None = None,
                    on_cluster: bool = False) -> tuple[str, str | None]:
    """`name`, or for `auto` the backend chosen for `configs`; and why (None: not auto). A
    cluster's workers load their own backend: auto, which looks here, is refused there."""
    if name not in (*backends.NAMES, AUTO):
        also = "" if on_cluster else f", or {AUTO} (the fastest here for the config)"
        raise UsageError(f"unknown backend {name!r}; choose one of "
                         f"{', '.join(backends.NAMES)}{also}")
    if name != AUTO:
        return name, None
    if on_cluster:
        raise UsageError("--backend auto picks among the backends that load here; a "
                         "cluster's workers load theirs: name one")
    return choose_for_all(configs, device)
