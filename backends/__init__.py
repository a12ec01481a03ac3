"""Array backends, one small module each, found by name: `load("numpy")`, `load("cupy", "0")`.

A backend module exposes `load(device: str | None) -> Backend` and raises ImportError with the
reason when it cannot (library missing, no CUDA device, driver too old).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields, replace
from typing import Any

NAMES = ("numpy", "numba", "array-api-strict", "torch", "cupy", "jax")


# The dropout hash's multiplier: trainer/core/dropout.py's hash32 and the backends' hash32
# kernels both import it from here (backends sit below trainer and import nothing of it).
HASH32_MULTIPLIER = 0x45D9F3B  # < 2**31: products with 32-bit values stay below 2**63

Kernel = Callable[..., Any]


@dataclass(frozen=True)
class Kernels:
    """Optional accelerations the training step uses where present (trainer/core/step/); a
    field left None is done in plain array-API code. Each names the reference it mirrors.

    With `matmul` and `sum0` the step keeps its parameters as views of one flat buffer, so the
    backend's arrays must be views when sliced and reshaped (numpy, cupy, torch).
    """

    matmul: Kernel | None = None  # (a, b, out) -> out = a @ b, written into `out`
    take: Kernel | None = None  # (x, idx, out) -> out = rows `idx` of x, written into `out`
    sum0: Kernel | None = None  # (x, out) -> out = x summed over axis 0, written into `out`
    # (a, b, out, alpha, beta) -> out = alpha * a @ b + beta * out, in place: with beta = m it
    # is optim.momentum (v = m v + g) inside the weight gradient's GEMM
    gemm_acc: Kernel | None = None
    # (x, y) -> update, where update(alpha) does y += alpha * x in place (1-D arrays, the same
    # two every time: their addresses may be bound once); optim.sgd's w += v
    axpy: Kernel | None = None
    # (name, z) -> z with activations.ACTIVATIONS[name][0] applied in place, or None where not
    # offered for that activation
    activate: Kernel | None = None
    # (name, z, b) -> z = activation(z + b) in place, b broadcast (network.forward's bias add
    # and activation in one pass), or None where not offered for that activation
    bias_activate: Kernel | None = None
    # (name, a, g, tmp, mask) -> g times the derivative of the activation whose output is `a`
    # (activations.ACTIVATIONS[name][1]), after g *= mask when a dropout mask is given, in
    # place in `g` (`tmp`: scratch shaped like `a`); None where not offered (g untouched)
    activate_grad: Kernel | None = None
    # (logits_t, bias, y_all, idx, scale, bias_grad) -> (summed cross-entropy, correct count,
    # delta_t): losses.loss_and_delta fused with metrics.hits on transposed logits (classes
    # along axis 0, one column per sample: reductions over a short axis 1 are slow; C-contiguous
    # and free to overwrite). It adds the bias column first, takes the labels as y_all[idx],
    # leaves delta_t = scale * (softmax - onehot(labels)) in logits_t and writes the bias's
    # gradient (delta summed over the samples) into bias_grad.
    softmax_xent_t: Kernel | None = None
    # (w, v, g, m, nesterov, rest) -> optim.sgd over flat buffers in one pass, where below
    # index `rest` v is already updated (VelocityStep)
    sgd_update: Kernel | None = None
    # (x, perm, batch_size, first_step) -> an iterator of the batches' input rows x[perm[lo:hi]]
    # gathered ahead of use (host arrays; see prefetch.py)
    prefetch: Kernel | None = None
    # int64 values in [0, 2**32) -> trainer/core/dropout.py's hash32 of them, the same bits
    hash32: Kernel | None = None
    # (counter, key, p, dtype) -> dropout.keep_mask's multipliers in one pass (the same bits)
    keep_mask: Kernel | None = None
    # (sums, loss, correct) -> sums += (loss, correct), sums a float64 pair on the device: a
    # step's running figures in one pass
    accumulate: Kernel | None = None
    # (warp) -> a callable (x, idx, key) -> trainer/core/elastic.py's ElasticWarp(x, idx) with
    # the fields of `key` (the same bits), made from the warp's constants
    elastic: Kernel | None = None
    # (shifter) -> a callable (x, idx, shifts) -> trainer/core/augment.py's Shifter(x, idx)
    # with the epoch's `shifts` (the same bits), made from the shifter's table
    shift: Kernel | None = None
    # kernels a load-time self-test left out, with the reason: (name, why)
    dropped: tuple[tuple[str, str], ...] = ()

    def offered(self) -> tuple[str, ...]:
        """The names of the kernels this backend offers."""
        return tuple(f.name for f in fields(self) if f.name != "dropped"
                     and getattr(self, f.name) is not None)

    def without(self, *names: str) -> Kernels:
        """The same kernels less `names`."""
        return replace(self, **dict.fromkeys(names))


@dataclass(frozen=True)
class Compiler:
    """What a backend that compiles whole functions offers (jax): trainer/core/step/compiled.py's
    CompiledStep traces the plain step once with it and runs many steps as one loop on the
    device, so no step pays Python's dispatch of each of its ~40 array operations."""

    # (fn, static_argnums, donate_argnums) -> fn traced once per static arguments and input
    # shapes, then compiled; the donated arguments' buffers may be reused for its results
    jit: Callable[..., Any]
    # (cond, body, carry) -> carry: `while cond(carry): carry = body(carry)`, on the device
    while_loop: Callable[..., Any]
    # (x, start, size) -> x[start:start + size] where `start` is traced (size is static)
    dynamic_slice: Callable[..., Any]


@dataclass(frozen=True)
class Backend:
    """What a training run needs of an array library: its namespace, where arrays live, what
    it controls. The run asks these fields, never the backend's name."""

    name: str
    xp: Any
    device: Any
    device_name: str
    version: str
    asarray: Callable[[Any], Any]  # host numpy array -> on the device (numpy: may not copy)
    to_numpy: Callable[[Any], Any]  # array on the device -> host numpy array
    synchronize: Callable[[], None]  # wait for queued device work (for timing)
    on_host: bool  # arrays live in host memory: reading a scalar back costs nothing
    # its math runs on the CPU BLAS that threadpoolctl controls (numpy's own OpenBLAS)
    host_blas: bool = False
    # (free, total) bytes of the device's memory, its caches released first; None: the host's
    memory: Callable[[], tuple[int, int]] | None = None
    # a context in which new arrays land on this backend's device, in whichever thread runs it
    # (CuPy's current device is per thread: without it another thread allocates on device 0)
    scope: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    devices: tuple[str, ...] = ()
    kernels: Kernels = field(default_factory=Kernels)
    # compiles whole steps (its arrays are immutable: the step's state is replaced, never
    # written in place); None: the step runs one array operation at a time
    compiler: Compiler | None = None
    # (dtype name) -> a kernel that runs a stretch of whole training steps on host arrays
    # (numba_step.py's `steps`, its arguments documented there), or None where it has none for
    # that dtype; trainer/core/step/fused.py's FusedStep drives it for the configs it covers
    fused: Callable[[str], Any] | None = None
    # the device library's own out-of-memory errors (the host's MemoryError is always one)
    memory_errors: tuple[type[BaseException], ...] = ()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether `exc` says that the host or this backend's device ran out of memory."""
        return isinstance(exc, (MemoryError, *self.memory_errors))


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    version: str = ""
    devices: tuple[str, ...] = ()
    reason: str = ""  # why it does not load
    kernels: tuple[str, ...] = ()  # the fast kernels it offers
    dropped: tuple[tuple[str, str], ...] = ()  # kernels its self-tests left out, and why
    compiles: bool = False  # it compiles whole steps (Backend.compiler or Backend.fused)


def _module(name: str) -> Any:
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    return importlib.import_module(f".{name.replace('-', '_')}", __name__)


def load(name: str, device: str | None = None) -> Backend:
    """Load backend `name` on `device` (None: its default). Raises ImportError if unavailable."""
    return _module(name).load(device)


def status(name: str) -> BackendStatus:
    """Whether backend `name` loads here, with its version and devices, or why not."""
    try:
        backend = load(name)
    except ImportError as e:
        return BackendStatus(name, False, reason=str(e) or type(e).__name__)
    return BackendStatus(name, True, backend.version, backend.devices or (backend.device_name,),
                         kernels=backend.kernels.offered(), dropped=backend.kernels.dropped,
                         compiles=backend.compiler is not None or backend.fused is not None)


def nop() -> None:
    """The synchronize of a backend that computes eagerly on the host."""
