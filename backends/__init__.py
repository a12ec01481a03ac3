"""Array backends, one small module each, found by name: `load("numpy")`, `load("cupy", "0")`.

A backend module exposes `load(device: str | None) -> Backend` and raises ImportError with the
reason when it cannot (library missing, no CUDA device, driver too old).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NAMES = ("numpy", "array-api-strict", "torch", "cupy")


@dataclass(frozen=True)
class Backend:
    """What the training loop needs of an array library: its namespace and where arrays live."""

    name: str
    xp: Any
    device: Any
    device_name: str
    version: str
    asarray: Callable[[Any], Any]  # host numpy array -> on the device (numpy: may not copy)
    to_numpy: Callable[[Any], Any]  # array on the device -> host numpy array
    sync: Callable[[], None]  # wait for queued device work (for timing)
    devices: tuple[str, ...] = ()
    # Optional accelerations the training step uses when present (see trainer/step.py):
    # "matmul": (a, b, out) -> out = a @ b written into `out`;
    # "take": (x, idx, out) -> out = rows `idx` of x written into `out`;
    # "sum0": (x, out) -> out = x summed over axis 0, written into `out`;
    # "gemm_acc": (a, b, out, alpha, beta) -> out = alpha * a @ b + beta * out, in place;
    # "axpy": (x, y) -> update, where update(alpha) does y += alpha * x in place (1-D arrays,
    #     the same two every time: their addresses may be bound once);
    # "activate": (name, z) -> z with the activation applied in place, or None if not offered;
    # "activate_grad": (name, a, g, tmp) -> g times the derivative of the activation whose
    #     output is `a`, in place in `g` (`tmp`: scratch shaped like `a`), or None;
    # "softmax_xent_t": (logits_t, labels, scale) -> (summed cross-entropy, correct count,
    #     scale * (softmax - onehot(labels)) laid out like logits_t), with classes along axis 0
    #     and one column per sample (reductions over a short axis 1 are slow), logits_t
    #     C-contiguous and free to overwrite;
    # "prefetch": (x, perm, batch_size, first_step) -> an iterator of the batches' input rows
    #     x[perm[lo:hi]] gathered ahead of use (host arrays; see backends/prefetch.py);
    # "hash32": int64 values in [0, 2**32) -> trainer/dropout.py's hash32 of them, same bits.
    # With "matmul" and "sum0" the step keeps its parameters as views of one flat buffer, so
    # the backend's arrays must be views when sliced and reshaped (numpy, cupy, torch).
    kernels: dict[str, Callable[..., Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    version: str = ""
    devices: tuple[str, ...] = ()
    reason: str = ""


def _module(name: str) -> Any:
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    return importlib.import_module(f"backends.{name.replace('-', '_')}")


def load(name: str, device: str | None = None) -> Backend:
    """Load backend `name` on `device` (None: its default). Raises ImportError if unavailable."""
    return _module(name).load(device)


def status(name: str) -> BackendStatus:
    """Whether backend `name` loads here, with its version and devices, or why not."""
    try:
        b = load(name)
    except ImportError as e:
        return BackendStatus(name, False, reason=str(e) or type(e).__name__)
    return BackendStatus(name, True, b.version, b.devices or (b.device_name,))


def nop() -> None:
    """The sync of a backend that computes eagerly on the host."""
