"""A small hyper-parameter sweep around neural-net-rs's default config, then its best config.

    python scripts/sweep_default.py [--trials 10] [--epochs 3] [--limit-train 20000]
        [--sampler tpe|random|grid|perturb] [--workers K] [--data-dir DIR]

Runs `trainer sweep configs/default.json --space configs/sweep-default.json` (the public CLI)
into sweeps/default-small/ and prints the best config it wrote. Run it again to add trials.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from trainer import Config

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-train", type=int, default=20000)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--sweep-dir", type=Path, default=Path("sweeps/default-small"))
    args = parser.parse_args()

    cmd = [sys.executable, "-m", "trainer", "sweep", str(ROOT / "configs/default.json"),
           "--space", str(ROOT / "configs/sweep-default.json"), "--study", "default-small",
           "--trials", str(args.trials), "--epochs", str(args.epochs),
           "--limit-train", str(args.limit_train), "--sampler", args.sampler,
           "--workers", str(args.workers), "--sweep-dir", str(args.sweep_dir)]
    if args.data_dir:
        cmd += ["--data-dir", str(args.data_dir)]
    code = subprocess.call(cmd)
    best = args.sweep_dir / "best.json"
    if code == 0 and best.is_file():
        config = Config.from_file(best)
        print(f"\nBest config ({best}): network {config.describe()}, learning_rate "
              f"{config.learning_rate:.4g}, momentum {config.momentum:.3g}, batch_size "
              f"{config.batch_size}")
        print(f"Train it: trainer train {best} --epochs 30")
    return code


if __name__ == "__main__":
    sys.exit(main())
