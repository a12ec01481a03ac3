"""CuPy on a CUDA GPU; `--device N` picks the card."""

from __future__ import annotations

from typing import Any

from backends import Backend


def load(device: str | None = None) -> Backend:
    try:
        import cupy
        from array_api_compat import cupy as xp
    except ImportError as e:
        raise ImportError(
            f"cupy is not installed ({e}); pip install 'trainer[cuda12]' or 'trainer[cuda13]'"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, driver too old, no device
        raise ImportError(f"cupy {cupy.__version__} cannot use CUDA: {e}") from e
    if count == 0:
        raise ImportError(f"cupy {cupy.__version__} sees no CUDA device")
    index = int(str(device).removeprefix("cuda:")) if device not in (None, "cuda") else 0
    if not 0 <= index < count:
        raise ImportError(f"no CUDA device {index}: this machine has {count}")
    dev = cupy.cuda.Device(index)
    dev.use()
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]

    def asarray(a: Any) -> Any:
        with dev:
            return cupy.asarray(a)

    return Backend(
        name="cupy", xp=xp, device=dev,
        device_name=name.decode() if isinstance(name, bytes) else str(name),
        version=cupy.__version__, asarray=asarray, to_numpy=cupy.asnumpy,
        sync=cupy.cuda.Device(index).synchronize,
        devices=tuple(f"cuda:{i}" for i in range(count)),
    )
