"""array-api-strict: the standard and nothing more, to prove the math uses only the standard."""

from __future__ import annotations

import numpy as np

from . import Backend, nop


def load(device: str | None = None) -> Backend:
    try:
        import array_api_strict as xp
    except ImportError as e:
        raise ImportError(f"array-api-strict is not installed ({e}); "
                          "python -m pip install \".[strict]\" in the trainer checkout") from e
    dev = xp.Device()
    if device not in (None, "cpu", "CPU_DEVICE"):
        raise ImportError(f"array-api-strict has only its CPU device, not {device!r}")
    return Backend(
        name="array-api-strict", xp=xp, device=dev, device_name="cpu", version=xp.__version__,
        asarray=xp.asarray, to_numpy=lambda a: np.from_dlpack(a).copy(), synchronize=nop,
        on_host=True, host_blas=True,
        devices=("cpu",),
    )
