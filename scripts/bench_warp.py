"""Benchmark: the training images' augmentation per epoch, the numpy backend's kernels against
the numba backend's (backends/numba_elastic.py).

configs/mnist-99.3.json's augmentation (elastic alpha 34, sigma 4, then shifts up to 2) on
28x28 float32 images, an epoch of N images in batches of B (the last one partial), for three
stages: the elastic warp alone, the shift alone, and the warp then the shift (what a run of
that config does to each batch). Only the augmentation calls are timed (the batch is gathered
outside the clock). The 3 stages x 2 backends are interleaved within each round (the order
rotates from round to round), then medians and numba/numpy ratios per batch size. Both
backends' smoothings are the same GEMMs: on a loaded machine a second BLAS thread that is
descheduled stalls them, so --blas-threads 1 gives steadier figures. Each
backend's output is checked bit for bit against the other's first. Writes the table as JSON.

    flock /tmp/trainer-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python scripts/bench_warp.py [--batch-sizes 32 128 512] [--rounds 7] [--blas-threads 1]
        [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's trainer

from trainer import backends  # noqa: E402
from trainer.core.augment import Shifter, chain  # noqa: E402
from trainer.core.elastic import ElasticWarp  # noqa: E402

SHAPE = (28, 28)
BACKGROUND = -0.1307 / 0.3081  # a blank pixel, standardized as MNIST's are
STAGES = ("warp", "shift", "warp+shift")


def augmentation(backend: backends.Backend, stage: str, n: int, seed: int):  # noqa: ANN201
    """The stage's (x, idx) -> x on `backend`, with its kernels, set up for epoch 1."""
    k = backend.kernels
    warp = shifter = None
    if "warp" in stage:
        warp = ElasticWarp(np, np.ascontiguousarray, SHAPE, alpha=34.0, sigma=4.0, rotate=0.0,
                           scale=0.0, background=BACKGROUND, seed=seed, dtype=np.float32,
                           hash_kernel=k.hash32, kernel=k.elastic)
        warp.use(1)
    if "shift" in stage:
        shifter = Shifter(np, np.ascontiguousarray, SHAPE, 2, BACKGROUND, np.float32,
                          kernel=k.shift)
        shifter.use(shifter.draw(np.random.default_rng(seed), n))
    return chain(warp, shifter)


def epoch_seconds(augment, images: np.ndarray, perm: np.ndarray, size: int) -> float:  # noqa: ANN001
    """The augmentation's time over one epoch of batches of `size` (gathers not counted)."""
    total = 0.0
    for lo in range(0, len(perm), size):
        idx = perm[lo:lo + size]
        x = np.take(images, idx, axis=0)
        started = time.perf_counter()
        augment(x, idx)
        total += time.perf_counter() - started
    return total


def check_bits(made: dict[tuple[str, str], object], images: np.ndarray, size: int) -> None:
    idx = np.arange(size, dtype=np.int64) * 3
    x = np.take(images, idx, axis=0)
    for stage in STAGES:
        a, b = (np.array(made[name, stage](x, idx)) for name in ("numpy", "numba"))
        if not np.array_equal(a, b):
            sys.exit(f"error: numba's {stage} differs from numpy's at batch {size}")


def machine() -> dict[str, object]:
    from threadpoolctl import threadpool_info

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "load": list(os.getloadavg()),
            "commit": commit, "numpy": np.__version__,
            "blas_threads": {Path(p["filepath"]).name: p["num_threads"]
                             for p in threadpool_info() if p["user_api"] == "blas"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="limit the BLAS (the smoothings' GEMMs) to this many threads")
    parser.add_argument("--json-out", type=Path, default=Path("bench_warp.json"))
    args = parser.parse_args()
    loaded = {name: backends.load(name) for name in ("numpy", "numba")}
    rng = np.random.default_rng(0)
    images = rng.random((args.images, SHAPE[0] * SHAPE[1]), dtype=np.float32)
    variants = [(name, stage) for stage in STAGES for name in loaded]
    times: dict[int, dict[str, list[float]]] = {}
    for size in args.batch_sizes:
        made = {v: augmentation(loaded[v[0]], v[1], args.images, seed=0) for v in variants}
        check_bits(made, images, size)
        for v in variants:  # compiled, buffers made: warm
            epoch_seconds(made[v], images, np.arange(2 * size), size)
        if args.blas_threads is not None:  # every BLAS is loaded by now
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=args.blas_threads, user_api="blas")
        times[size] = {f"{n} {s}": [] for n, s in variants}
        for r in range(args.rounds):
            perm = np.random.default_rng(r).permutation(args.images)
            turn = r % len(variants)
            for name, stage in variants[turn:] + variants[:turn]:
                times[size][f"{name} {stage}"].append(
                    epoch_seconds(made[name, stage], images, perm, size))
        print(f"batch {size}: {args.rounds} rounds done", flush=True)
    report(times, args, machine())


def report(times: dict[int, dict[str, list[float]]], args: argparse.Namespace,
           about: dict[str, object]) -> None:
    medians = {size: {v: statistics.median(t) for v, t in runs.items()}
               for size, runs in times.items()}
    print(f"\n{args.images} float32 28x28 images an epoch, {args.rounds} rounds interleaved; "
          f"medians; {about['cpu']}, BLAS threads {about['blas_threads']}, load "
          f"{about['load'][0]:.2f}, commit {about['commit']}\n")
    print("| batch | stage | numpy (ms/epoch) | numba (ms/epoch) | numba / numpy |")
    print("| --- | --- | --- | --- | --- |")
    for size, med in medians.items():
        for stage in STAGES:
            a, b = med[f"numpy {stage}"], med[f"numba {stage}"]
            print(f"| {size} | {stage} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.2f} |")
    args.json_out.write_text(json.dumps({"images": args.images, "rounds": args.rounds,
                                         "dtype": "float32", **about, "seconds": times,
                                         "medians": medians}, indent=2) + "\n")
    print(f"\n{args.json_out} written")


if __name__ == "__main__":
    main()
