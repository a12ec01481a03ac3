"""How a run that fails is recorded and reported, the same way for a single run and a batch's:
a diverged loss leaves a metrics.json that says so, running out of memory one clear message."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from trainer.backends import Backend
from trainer.core.config import Config
from trainer.errors import OutOfMemory
from trainer.fileio import atomic_write_json
from trainer.run.results import DivergedError
from trainer.run.rundir import diverged_metrics


@contextlib.contextmanager
def recorded_failures(path: Path, config: Config, backend: Backend,
                      workers: int = 1) -> Iterator[None]:
    """Around a run's training: a DivergedError is raised again once metrics.json in `path`
    records it; the host's or the backend's out-of-memory error becomes an OutOfMemory."""
    try:
        yield
    except DivergedError as e:
        atomic_write_json(path / "metrics.json", diverged_metrics(e, backend.name, config))
        raise
    except Exception as e:
        if backend.is_out_of_memory(e):
            raise out_of_memory(e, path, config, backend, workers) from None
        raise


def out_of_memory(e: BaseException, path: Path, config: Config, backend: Backend,
                  workers: int = 1) -> OutOfMemory:
    """One message: the run, its batch size, the backend, what memory there was, what to try."""
    figures = ""
    with contextlib.suppress(Exception):
        if backend.memory is not None:
            free, total = backend.memory()
            figures = f"device memory: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
        else:
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f)
            figures = (f"host memory: {info['MemAvailable'].strip()} available of "
                       f"{info['MemTotal'].strip()}")
    fewer = ", or fewer --workers" if workers > 1 else ""
    return OutOfMemory(f"{path}: out of memory training at batch size {config.batch_size} "
                       f"on {backend.name} ({type(e).__name__}: {e}); {figures}; try a smaller "
                       f"--batch-size or network{fewer}")
