"""Gather the next batches' input rows in a background thread, for host (NumPy) arrays.

At batch 32 the random-row gather of a batch is ~5% of a training step, at batch 512 ~12%, and
it is memory-bound work that one thread does while the other core sits idle (small GEMMs run on
one BLAS thread; see trainer/run/train.py) or is busy with the step's elementwise work. So a worker
thread gathers whole chunks of batches (about 1024 rows) into one of two buffers while the step
trains on the other: np.take releases the GIL, and one handover per chunk keeps the threads'
handshakes rare. The rows are the same bytes the step would have gathered itself, so training
is bitwise unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import numpy as np

CHUNK_ROWS = 1024  # rows gathered per handover (rounded to whole batches)
SLOTS = 2  # chunk buffers: one being trained on, one being filled


class Prefetch(Iterable[np.ndarray]):
    """Batches x[perm[lo:hi]] for steps first_step, first_step + 1, ... of an epoch.

    Iterate once. Each batch is a view of a chunk buffer, valid until the next one is taken.
    close() stops the worker (also when the epoch is left half-way: Ctrl-C, an error, a
    divergence).
    """

    def __init__(self, x: np.ndarray, perm: np.ndarray, batch_size: int, first_step: int = 0):
        self.x, self.bs = x, batch_size
        self.perm = perm[first_step * batch_size:]
        self.per_chunk = max(1, CHUNK_ROWS // batch_size)
        rows = min(self.per_chunk * batch_size, len(self.perm))
        self.chunks = -(-len(self.perm) // (self.per_chunk * batch_size))
        self.buffers = [np.empty((rows, x.shape[1]), dtype=x.dtype) for _ in range(SLOTS)]
        self.free, self.ready = threading.Semaphore(SLOTS), threading.Semaphore(0)
        self.error: BaseException | None = None
        self.stopping = False
        self.worker = threading.Thread(target=self._work, name="trainer-prefetch", daemon=True)
        self.worker.start()

    def _work(self) -> None:
        rows = self.per_chunk * self.bs
        try:
            for c in range(self.chunks):
                self.free.acquire()
                if self.stopping:
                    return
                idx = self.perm[c * rows:(c + 1) * rows]
                out = self.buffers[c % SLOTS][:len(idx)]
                # mode="clip": no bounds check (a permutation), and no temporary before `out`
                np.take(self.x, idx, axis=0, out=out, mode="clip")
                self.ready.release()
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, raised there
            self.error = e
            self.ready.release()

    def __iter__(self) -> Iterator[np.ndarray]:
        rows = self.per_chunk * self.bs
        for c in range(self.chunks):
            if c:  # give the previous chunk's buffer back to the worker
                self.free.release()
            self.ready.acquire()
            if self.error is not None:
                raise self.error
            filled = self.buffers[c % SLOTS][:min(rows, len(self.perm) - c * rows)]
            for lo in range(0, filled.shape[0], self.bs):
                yield filled[lo:lo + self.bs]

    def close(self) -> None:
        self.stopping = True
        self.free.release()  # wakes the worker if it waits for a buffer
        self.worker.join()
