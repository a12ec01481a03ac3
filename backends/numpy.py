"""NumPy: the reference backend, on the CPU."""

from __future__ import annotations

import numpy as np
from array_api_compat import numpy as xp

from backends import Backend, nop


def load(device: str | None = None) -> Backend:
    if device not in (None, "cpu"):
        raise ImportError(f"numpy runs on the CPU only, not on device {device!r}")
    return Backend(
        name="numpy", xp=xp, device="cpu", device_name="cpu", version=np.__version__,
        asarray=np.ascontiguousarray, to_numpy=np.asarray, sync=nop, devices=("cpu",),
    )
