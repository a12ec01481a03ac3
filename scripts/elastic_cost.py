"""What the elastic warp costs per epoch: training epochs with and without it, interleaved.

    python scripts/elastic_cost.py [configs/mnist-99.3.json] [--rounds 3] [--epochs 2]

Each round trains the config for a few epochs as it is, then with the elastic warp (and any
rotation or scaling) switched off, and times warping one epoch's images alone, with the
backend's warp kernel (backends/numpy_elastic.py on NumPy) and with the plain array-API
operations; it prints the medians of the per-epoch training seconds (evaluation excluded) and
their ratio. Uses only the public Python API and trainer.core.elastic.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from trainer import Config, load_backend, load_dataset, train
from trainer.core.elastic import ElasticWarp
from trainer.errors import TrainerError

ROOT = Path(__file__).resolve().parent.parent


def warp_epoch(config: Config, backend_name: str, n: int, kernel: bool = True) -> float:
    """Seconds to warp n standardized-looking images in the config's batches, on the device,
    with the backend's warp kernel or (kernel=False) the array-API operations."""
    be = load_backend(backend_name)
    xp, aug = be.xp, config.augment
    warp = ElasticWarp(xp, be.asarray, (28, 28), alpha=aug.elastic_alpha,
                       sigma=aug.elastic_sigma, rotate=aug.rotate, scale=aug.scale,
                       background=-0.42, seed=0, dtype=getattr(xp, config.dtype),
                       hash_kernel=be.kernels.hash32,
                       kernel=be.kernels.elastic if kernel else None)
    warp.use(1)
    x = be.asarray(np.random.default_rng(0).random((n, 784), dtype=config.dtype))
    perm = be.asarray(np.random.default_rng(0).permutation(n))
    be.synchronize()
    start = time.perf_counter()
    for lo in range(0, n, config.batch_size):
        idx = perm[lo:lo + config.batch_size]
        warp(xp.take(x, idx, axis=0), idx)
    be.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, default=ROOT / "configs/mnist-99.3.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--limit-train", type=int, default=None, help="the first N images only")
    args = parser.parse_args()
    try:
        config = Config.from_file(args.config).replace(epochs=args.epochs)
        if not config.augment.warps:
            sys.exit(f"error: {args.config} has no elastic warp to measure")
        plain = config.replace(augment={"shift": config.augment.shift})
        data = load_dataset()
        with_warp: list[float] = []
        without: list[float] = []
        alone: list[float] = []
        plain_ops: list[float] = []
        for _ in range(args.rounds):
            for cfg, times in ((config, with_warp), (plain, without)):
                times += [h.seconds for h in train(cfg, data, args.backend,
                                                     limit_train=args.limit_train).history]
            total = min(len(data.train_labels), args.limit_train or len(data.train_labels))
            n = total - config.validation_size(total)
            alone.append(warp_epoch(config, args.backend, n))
            plain_ops.append(warp_epoch(config, args.backend, n, kernel=False))
    except TrainerError as e:
        sys.exit(f"error: {e}")
    w, p, a, o = (statistics.median(t) for t in (with_warp, without, alone, plain_ops))
    print(f"{args.config.name}, {args.rounds} rounds of {args.epochs} epochs, median s/epoch:")
    print(f"  with the warp {w:.2f}, without {p:.2f}: +{w - p:.2f} s (x{w / p:.2f}); "
          f"warping {n} images alone {a:.2f} s")
    print(f"  warping them with the array-API operations instead of the backend's kernel: "
          f"{o:.2f} s")


if __name__ == "__main__":
    main()
