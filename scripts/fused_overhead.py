"""Where the numba backend's step time goes beyond its GEMMs, for the default network.

Times, interleaved in rounds in one process on real MNIST (float32, the BLAS threads that
`trainer train` would pick, or --threads):
  floor   the bench's GEMM floor: the five GEMMs of forward and backward in NumPy, on rows
          sliced in order (trainer/bench/peers.py's gemm_floor);
  gemms   the same five GEMMs called from numba the way the fused kernel calls them (the weight
          gradients into velocities with beta = momentum), on the same rows;
  fused   the numba backend's whole step (trainer/core/fused.py's FusedStep over an epoch's
          full batches in random order): gathering, the elementwise work and the update too.
Prints us per step (medians) and writes JSON.

    python scripts/fused_overhead.py --batch-sizes 32,128,512 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from trainer import backends
from trainer.backends import numba_step, numpy_blas
from trainer.bench.peers import gemm_floor
from trainer.core.config import default_config
from trainer.core.fused import FusedStep
from trainer.core.network import init_params
from trainer.data.dataset import InputScaling, load_dataset
from trainer.run.train import auto_blas_threads

RM, NT, T = numpy_blas.ROW_MAJOR, numpy_blas.NO_TRANS, numpy_blas.TRANS


gemm = numba_step.gemm_function(np.dtype(np.float32))  # the kernel's own GEMM


@njit(nogil=True)
def five_gemms(x_all, steps, bs, w1, w2, z1, z2, down, v1, v2, m):  # noqa: ANN001, ANN201
    d, h, k = w1.shape[0], w1.shape[1], w2.shape[1]
    for s in range(steps):
        x = x_all[s * bs:(s + 1) * bs]
        gemm(RM, NT, NT, bs, h, d, 1.0, x.ctypes.data, d, w1.ctypes.data, h, 0.0,
             z1.ctypes.data, h)
        gemm(RM, NT, NT, bs, k, h, 1.0, z1.ctypes.data, h, w2.ctypes.data, k, 0.0,
             z2.ctypes.data, k)
        gemm(RM, NT, T, bs, h, k, 1.0, z2.ctypes.data, k, w2.ctypes.data, k, 0.0,
             down.ctypes.data, h)
        gemm(RM, T, NT, h, k, bs, 1.0, z1.ctypes.data, h, z2.ctypes.data, k, m,
             v2.ctypes.data, k)
        gemm(RM, T, NT, d, h, bs, 1.0, x.ctypes.data, d, down.ctypes.data, h, m,
             v1.ctypes.data, h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="32,128,512")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: auto)")
    parser.add_argument("--out", default="fused_overhead.json")
    args = parser.parse_args()
    be = backends.load("numba")
    data = load_dataset(dataset="mnist")
    x = InputScaling.fit(data.train_images).apply(data.train_images, dtype="float32")
    y = data.train_labels.astype(np.int64)
    rows = []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        config = default_config().replace(batch_size=bs)
        threads = args.threads or auto_blas_threads(config, be)
        rng = np.random.default_rng(0)
        host = init_params(config.sizes, config.activations, "auto", rng, "float32")
        w1, w2 = host[0].copy(), host[2].copy()
        z1, z2 = np.empty((bs, 128), np.float32), np.empty((bs, 10), np.float32)
        down, v1, v2 = np.empty((bs, 128), np.float32), np.zeros_like(w1), np.zeros_like(w2)
        step = FusedStep(config, be.xp, host, [np.zeros_like(p) for p in host],
                         be.fused("float32"))
        steps = len(x) // bs
        times: dict[str, list[float]] = {"floor": [], "gemms": [], "fused": []}
        with threadpool_limits(threads, user_api="blas"):
            five_gemms(x, 1, bs, w1, w2, z1, z2, down, v1, v2, 0.5)  # compile
            step.begin_epoch(x, y, rng.permutation(len(x)), [0.01] * (steps + 1), 0)
            step.run(0, 1, 0.0, 0.0)
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                gemm_floor(config, x[:steps * bs], y, 1)
                times["floor"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                five_gemms(x, steps, bs, w1, w2, z1, z2, down, v1, v2, 0.5)
                times["gemms"].append(time.perf_counter() - t0)
                step.begin_epoch(x, y, rng.permutation(len(x)), [0.01] * (steps + 1), 0)
                t0 = time.perf_counter()
                step.run(0, steps, 0.0, 0.0)
                times["fused"].append(time.perf_counter() - t0)
        us = {k: statistics.median(v) / steps * 1e6 for k, v in times.items()}
        rows.append({"batch": bs, "blas_threads": threads, **{f"{k}_us": round(v, 1)
                                                              for k, v in us.items()}})
        print(f"batch {bs:4d}  threads {threads or 'default'}  floor {us['floor']:7.1f}  "
              f"gemms {us['gemms']:7.1f}  fused {us['fused']:7.1f} us/step  "
              f"fused/floor {us['fused'] / us['floor']:.2f}  "
              f"beyond the gemms {us['fused'] - us['gemms']:6.1f}")
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
