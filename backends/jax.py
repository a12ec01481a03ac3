"""JAX: the plain step compiled whole (Backend.compiler), on JAX's default device (a CUDA GPU
where its jaxlib has one: jax[cuda12] or jax[cuda13], else the CPU) or the one `--device` names
(cpu, cuda, cuda:N)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from . import Backend, Compiler, nop


def load(device: str | None = None) -> Backend:
    try:
        import jax
        import jax.numpy as xp
    except ImportError as e:
        raise ImportError(f"jax is not installed ({e}); python -m pip install "
                          f"\".[jax]\" in the trainer checkout") from e
    # float64 runs and the dropout hash's int64 arithmetic need 64-bit types, which JAX turns
    # off by default. The switch is process-wide, but it only changes the types that are not
    # asked for: every array of a run is created with its dtype, and Python scalars stay weak
    # (float32 * 0.5 is float32 either way).
    jax.config.update("jax_enable_x64", True)
    dev = _device(jax, device)
    cpu = dev.platform == "cpu"
    devices = tuple(_name(d) for d in _all_devices(jax))

    def asarray(a: Any) -> Any:
        return jax.device_put(np.asarray(a), dev)

    def memory() -> tuple[int, int]:
        stats = dev.memory_stats() or {}
        total = stats.get("bytes_limit", 0)
        return total - stats.get("bytes_in_use", 0), total

    def jit(fn: Any, static_argnums: tuple[int, ...] = (),
            donate_argnums: tuple[int, ...] = ()) -> Any:
        return jax.jit(fn, static_argnums=static_argnums, donate_argnums=donate_argnums)

    def dynamic_slice(x: Any, start: Any, size: int) -> Any:
        return jax.lax.dynamic_slice_in_dim(x, start, size)

    return Backend(
        name="jax", xp=xp, device=dev, device_name=_name(dev) if cpu else dev.device_kind,
        version=jax.__version__, asarray=asarray, to_numpy=np.asarray,
        # nothing to wait for: the compiled step's loop returns its running sums with the
        # weights, from one computation, and the training loop reads those sums
        synchronize=nop, on_host=cpu, memory=None if cpu else memory,
        scope=lambda: jax.default_device(dev), devices=devices,
        compiler=Compiler(jit=jit, while_loop=jax.lax.while_loop, dynamic_slice=dynamic_slice),
    )


def _all_devices(jax: Any) -> list[Any]:
    found = list(jax.devices("cpu"))
    with contextlib.suppress(RuntimeError):  # no GPU backend in this jaxlib, or no GPU
        found += jax.devices("gpu")
    return found


def _name(device: Any) -> str:
    return "cpu" if device.platform == "cpu" else f"cuda:{device.id}"


def _device(jax: Any, device: str | None) -> Any:
    """`device` ("cpu", "cuda", "cuda:N", "gpu:N"; None: JAX's default) as a JAX device."""
    if device is None:
        return jax.devices()[0]
    kind, _, number = device.partition(":")
    if kind not in ("cpu", "cuda", "gpu") or (number and not number.isdigit()):
        raise ValueError(f"jax: --device {device!r} is not a device: use cpu, cuda or cuda:N")
    if kind == "cpu":
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError as e:
        raise ImportError(f"jax {jax.__version__} sees no CUDA device ({e}); "
                          "pip install 'jax[cuda12]'") from None
    index = int(number or 0)
    if index >= len(gpus):
        raise ImportError(f"jax sees {len(gpus)} CUDA device(s), not {device!r}")
    return gpus[index]
