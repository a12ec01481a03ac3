"""Train configs one after another and print a markdown table of test accuracy and time.

    python scripts/measure_configs.py configs/*.json [--backend numpy] [--out table.md]

Uses only the public Python API; this is how configs/README.md's figures were measured.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from trainer import Config, load_backend, load_dataset, train
from trainer.errors import TrainerError
from trainer.fileio import atomic_write_text


def main() -> None:
    try:
        _main()
    except TrainerError as e:  # a bad config path, an unavailable backend: a message, no traceback
        sys.exit(f"error: {e}")


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    data = load_dataset()
    backend = load_backend(args.backend, args.device)
    rows = ["| config | network | epochs | test accuracy | train accuracy | s/epoch | total s |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in args.configs:
        config = Config.from_file(path)
        result = train(config, data, backend)
        network = config.describe()
        rows.append(f"| {path.stem} | {network} | {config.epochs} | "
                    f"{result.test_accuracy:.2%} | {result.train_accuracy:.2%} | "
                    f"{result.total_seconds / config.epochs:.2f} | {result.total_seconds:.0f} |")
        print(rows[-1], flush=True)
    footer = (f"\nMeasured {time.strftime('%Y-%m-%d')} on {platform.machine()} "
              f"({platform.processor() or 'cpu'}), backend {args.backend}, "
              f"Python {platform.python_version()}.\n")
    table = "\n".join(rows) + "\n" + footer
    print(table)
    if args.out:
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
