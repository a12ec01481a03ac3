"""Where a numba epoch of a config goes: the whole epoch, the same epoch with the GEMMs made
no-ops, the GEMMs, the augmentation and the update each alone, and NumPy's epoch beside them;
medians, rounds interleaved, each measurement in its own process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_epoch_parts.py \
        configs/mnist-99.3.json [--epochs 2] [--rounds 3] [--out epoch_parts.json]

- "numba": the epoch's training seconds (trainer's own figure, validation not included).
- "numba, GEMMs no-op": the same run with the kernel's GEMM replaced by a call that only zeroes
  its output: what is left is the augmentation, the gathers and the kernel's elementwise work.
- "GEMMs alone": the step's forward and backward GEMMs at their shapes, back to back, through
  NumPy's own BLAS with its threads, times the epoch's steps (no augmentation, no elementwise).
- "augmentation alone": the gather, warp and shifts of an epoch's batches, with numba's kernels
  (what FusedStep._gather runs before each step, less its copy of the result into the kernel's
  input buffer), nothing else.
- "update alone": the fused kernel's update of every weight (the config's rule: momentum,
  Nesterov or Adam; numba_step._update) once per step of an epoch, nothing else.
- "numpy": NumPy's epoch, the same config.
The sum of the three "alone" parts is about the least an epoch of the fused kernel can take
with this BLAS (the rest of its elementwise work, that copy and the calls not counted); it is
printed beside 0.6x NumPy's epoch.
It also prints the GEMMs' rate at the step's shapes and that of one 2048x2048x2048 SGEMM (about
what the BLAS's threads can do on this CPU), in GFLOP/s.
A benchmark: run it under `flock /tmp/trainer-bench.lock` on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _epoch(config: str, backend: str, epochs: int, noop: bool) -> list[float]:
    """One process: train `epochs` + 1 epochs; the seconds of all but the first (compiling)."""
    from trainer import backends
    from trainer.core.config import Config
    from trainer.data.dataset import load_dataset
    from trainer.run.train import train

    if noop:
        import ctypes

        from trainer.backends import numba_step

        def zeroing(dtype: object) -> object:
            import numpy as np

            size = np.dtype(dtype).itemsize
            i64, real = ctypes.c_int64, (ctypes.c_float if size == 4 else ctypes.c_double)
            kind = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64,
                                    real, i64, i64, i64, i64, real, i64, i64)

            def call(_o, _ta, _tb, m, n, _k, _alpha, _a, _lda, _b, _ldb, beta, c, ldc):  # noqa: ANN001
                if beta == 0.0:  # C = op(A) op(B): leave C zero (finite logits, loss ln k)
                    ctypes.memset(c, 0, m * ldc * size)

            zeroing.keep = kind(call)  # type: ignore[attr-defined]
            return zeroing.keep  # type: ignore[attr-defined]

        numba_step.gemm_function = zeroing
    cfg = Config.from_file(config).replace(epochs=epochs + 1)
    result = train(cfg, load_dataset(), backends.load(backend))
    return [h.seconds for h in result.history[1:]]


def _augmentation(config: str) -> list[float]:
    """An epoch's batches gathered, warped and shifted by numba's kernels, three times."""
    import numpy as np

    from trainer.bench.peer_feed import Feed
    from trainer.core.config import Config
    from trainer.data.dataset import load_dataset

    cfg = Config.from_file(config)
    feed = Feed.from_dataset(cfg, load_dataset())
    if feed.augment is None:
        return [0.0, 0.0, 0.0]
    steps, size = _steps(cfg), cfg.batch_size
    times = []
    for epoch in range(1, 5):
        feed.begin(epoch)
        started = time.perf_counter()
        for s in range(steps):  # as FusedStep._gather (no thread limit), less its copy
            idx = feed.perm[s * size:(s + 1) * size]
            feed.augment(np.take(feed.x, idx, axis=0), idx)
        times.append(time.perf_counter() - started)
    return times[1:]  # the first compiles


def _update(config: str) -> list[float]:
    """The fused kernel's update (numba_step._update) once per step of an epoch, three times."""
    import numpy as np
    from numba import njit

    from trainer import backends
    from trainer.backends.numba_step import _update as update
    from trainer.core.config import Config
    from trainer.core.network import init_params
    from trainer.core.step.fused import FusedStep

    cfg = Config.from_file(config)
    be = backends.load("numba")
    host = init_params(cfg.sizes, cfg.activations, cfg.init, np.random.default_rng(0), cfg.dtype)
    step = FusedStep(cfg, be.xp, host, [np.zeros_like(p) for p in host], be.fused(cfg.dtype))
    steps = _steps(cfg)
    rows = cfg.batch_size * steps
    x = np.zeros((rows, cfg.sizes[0]), dtype=cfg.dtype)
    step.begin_epoch(x, np.zeros(rows, dtype=np.int64), np.arange(rows),
                     [cfg.learning_rate] * steps, 0, 0.0, 0.0)
    if step.args.g.size:  # Nesterov's and Adam's gradient buffer: small, finite values
        step.args.g[:] = 1e-6

    @njit(nogil=True, error_model="numpy")
    def updates(args: Any, count: int) -> None:
        for s in range(count):
            update(args, s)

    updates(step.args, 1)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        updates(step.args, steps)
        times.append(time.perf_counter() - started)
    return times


def _peak() -> list[float]:
    """GFLOP/s of a 2048x2048x2048 SGEMM through NumPy's BLAS, three times."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    out = a @ a
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(5):
            np.matmul(a, a, out=out)
        rates.append(5 * 2 * 2048**3 / (time.perf_counter() - started) / 1e9)
    return rates


def _steps(cfg: Any) -> int:
    """Steps in an epoch of the config: its training rows (the validation split held out) in
    batches, the last one partial."""
    from trainer.data.dataset import load_dataset

    n_train = len(load_dataset().train_labels)
    rows = n_train - cfg.validation_size(n_train)
    return -(-rows // cfg.batch_size)


def _flops(config: str) -> float:
    """Floating-point operations of an epoch's GEMMs (as _gemms runs them)."""
    from trainer.core.config import Config

    cfg = Config.from_file(config)
    steps = _steps(cfg)
    pairs = list(zip(cfg.sizes[:-1], cfg.sizes[1:], strict=True))
    macs = sum((3 if i > 0 else 2) * a * b for i, (a, b) in enumerate(pairs))
    return 2.0 * macs * cfg.batch_size * steps


def _gemms(config: str) -> list[float]:
    """The step's GEMMs back to back, per epoch of the config's training rows."""
    import numpy as np

    from trainer.core.config import Config

    cfg = Config.from_file(config)
    n, sizes = cfg.batch_size, cfg.sizes
    rng = np.random.default_rng(0)
    dtype = np.dtype(cfg.dtype)
    ws = [rng.standard_normal((a, b)).astype(dtype) for a, b in zip(sizes[:-1], sizes[1:],
                                                                    strict=True)]
    acts = [rng.standard_normal((n, s)).astype(dtype) for s in sizes]
    grads = [np.empty_like(w) for w in ws]
    downs = [np.empty((n, s), dtype) for s in sizes]

    def step() -> None:
        for i, w in enumerate(ws):  # forward
            np.matmul(acts[i], w, out=acts[i + 1])
        for i in range(len(ws) - 1, -1, -1):  # backward: delta @ w^T (not for the input), a^T delta
            if i > 0:
                np.matmul(acts[i + 1], ws[i].T, out=downs[i])
            np.matmul(acts[i].T, acts[i + 1], out=grads[i])

    steps = _steps(cfg)
    for _ in range(20):
        step()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="epoch_parts.json")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # a worker process: one measurement
    args = parser.parse_args()
    if args.part:
        kind, _, backend = args.part.partition(":")
        alone = {"gemms": _gemms, "augmentation": _augmentation, "update": _update}
        times = (alone[kind](args.config) if kind in alone else _peak() if kind == "peak"
                 else _epoch(args.config, backend, args.epochs, kind == "noop"))
        print(json.dumps(times))
        return
    parts = {"numba": "epoch:numba", "numba, GEMMs no-op": "noop:numba",
             "GEMMs alone": "gemms:", "augmentation alone": "augmentation:",
             "update alone": "update:", "numpy": "epoch:numpy", "peak": "peak:"}
    samples: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, part in parts.items():  # interleaved: a slow spell falls on every part
            out = subprocess.run([sys.executable, __file__, args.config, "--epochs",
                                  str(args.epochs), "--part", part], capture_output=True,
                                 text=True, check=True, cwd=ROOT).stdout
            samples[name] += json.loads(out.strip().splitlines()[-1])
    medians = {name: statistics.median(t) for name, t in samples.items()}
    peak = medians.pop("peak")
    print(f"{args.config}: seconds per epoch, medians of {args.rounds} rounds x "
          f"{args.epochs} epochs")
    print("| part | s/epoch | ÷ numba |\n| --- | ---: | ---: |")
    for name, m in medians.items():
        print(f"| {name} | {m:.3f} | {m / medians['numba']:.2f} |")
    rate = _flops(args.config) / medians["GEMMs alone"] / 1e9
    print(f"The GEMMs at the step's shapes: {rate:.0f} GFLOP/s; a 2048x2048x2048 SGEMM: "
          f"{peak:.0f} GFLOP/s")
    floor = sum(medians[f"{name} alone"] for name in ("GEMMs", "augmentation", "update"))
    print(f"GEMMs + augmentation + update, each alone: {floor:.3f} s; 0.6x NumPy's epoch: "
          f"{0.6 * medians['numpy']:.3f} s")
    medians |= {"gemm_gflops": rate, "peak_gflops": peak, "alone_sum": floor}
    Path(args.out).write_text(json.dumps({"config": args.config, "medians": medians,
                                          "samples": samples}, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
