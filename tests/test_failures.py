"""A failed run is recorded and reported one way for single runs and batches
(trainer/run/failures.py): out of memory as the backend recognises it, divergence in
metrics.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from trainer import backends
from trainer.core.config import default_config
from trainer.errors import OutOfMemory
from trainer.run.failures import recorded_failures
from trainer.run.results import DivergedError


class DeviceOutOfMemoryError(RuntimeError):
    """A device library's own out-of-memory error (as cupy's or torch's)."""


class OutOfMemoryWarningError(RuntimeError):
    """Not an out-of-memory error, whatever its name says."""


def _device_backend() -> backends.Backend:
    return dataclasses.replace(backends.load("numpy"), name="fakegpu",
                               memory=lambda: (2**30, 4 * 2**30),
                               memory_errors=(DeviceOutOfMemoryError,))


def test_the_backend_says_what_is_out_of_memory() -> None:
    be = _device_backend()
    assert be.is_out_of_memory(MemoryError()) and be.is_out_of_memory(DeviceOutOfMemoryError())
    assert not be.is_out_of_memory(OutOfMemoryWarningError())  # a name is not a type
    assert not backends.load("numpy").is_out_of_memory(DeviceOutOfMemoryError())


def test_out_of_memory_becomes_one_message(tmp_path: Path) -> None:
    cfg = default_config().replace(batch_size=512)
    with pytest.raises(OutOfMemory) as caught, \
            recorded_failures(tmp_path / "run-a", cfg, _device_backend(), workers=3):
        raise DeviceOutOfMemoryError("cudaMalloc failed")
    text = str(caught.value)
    assert text.startswith(f"{tmp_path / 'run-a'}: out of memory training at batch size 512 "
                           "on fakegpu (DeviceOutOfMemoryError: cudaMalloc failed)")
    assert "device memory: 1.0 GiB free of 4.0 GiB" in text and "fewer --workers" in text
    with pytest.raises(OutOfMemoryWarningError), \
            recorded_failures(tmp_path, cfg, _device_backend()):
        raise OutOfMemoryWarningError("passes through unchanged")


def test_divergence_is_recorded_then_raised(tmp_path: Path) -> None:
    cfg = default_config().replace(seed=7)
    with pytest.raises(DivergedError), recorded_failures(tmp_path, cfg, _device_backend()):
        raise DivergedError("training diverged in epoch 2, step 3/9", 2, 3)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"diverged": True, "message": "training diverged in epoch 2, step 3/9",
                       "epoch": 2, "step": 3, "backend": "fakegpu", "dtype": "float32",
                       "seed": 7}
