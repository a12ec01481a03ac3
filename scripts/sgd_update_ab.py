"""NumPy's chunked sgd_update kernel against optim.sgd's passes over whole buffers, interleaved.

    python scripts/sgd_update_ab.py [configs/mnist-99.json ...] [--rounds 4] [--limit-train 20000]

Each round trains each config for two epochs on the first --limit-train images with the NumPy
backend as it is, then with its `sgd_update` kernel left out (the step then runs optim.sgd over
the flat buffers), and prints the medians of the second epochs' training seconds and their
ratio. Both give the same weights bit for bit (tests/test_step.py); only the time differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

from trainer import Config, backends, load_dataset, train

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path,
                        default=[ROOT / "configs/mnist-99.json", ROOT / "configs/mnist-99.3.json"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--limit-train", type=int, default=20_000)
    args = parser.parse_args()
    data = load_dataset()
    chunked = backends.load("numpy")
    passes = dataclasses.replace(chunked, kernels=chunked.kernels.without("sgd_update"))
    for path in args.configs:
        cfg = Config.from_file(path).replace(epochs=2)
        times: dict[str, list[float]] = {"passes": [], "chunked": []}
        for _ in range(args.rounds):
            for name, backend in (("passes", passes), ("chunked", chunked)):
                result = train(cfg, data, backend, limit_train=args.limit_train)
                times[name].append(result.history[-1].seconds)
        old, new = (statistics.median(times[k]) for k in ("passes", "chunked"))
        print(f"{path.name}: {result.train_samples} training images, median s/epoch of "
              f"{args.rounds} interleaved rounds: whole-buffer passes {old:.3f}, chunked "
              f"{new:.3f}, ratio {new / old:.3f}")


if __name__ == "__main__":
    main()
