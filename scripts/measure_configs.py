"""Train configs with several seeds (one batch: `trainer train CONFIG... --seeds N`) and print
the summary as a markdown table, for configs/README.md.

    python scripts/measure_configs.py configs/*.json [--seeds 3] [--workers 1]
        [--backend numpy] [--out table.md] [any other `trainer train` option]

A thin caller of trainer.batch.train_batch: the runs land in a group directory under runs/
like the command's, and running it again resumes (finished runs are kept).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from trainer.batch import parse_seeds, train_batch
from trainer.batch.summary import markdown
from trainer.errors import TrainerError
from trainer.fileio import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--seeds", default="3", help="a count (3: seeds 0-2) or a list (0,5,7)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--device")
    parser.add_argument("--epochs", type=int, help="override every config's epochs")
    parser.add_argument("--limit-train", type=int, help="train on the first N images only")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    try:
        summary = train_batch(args.configs, parse_seeds(args.seeds),
                              overrides={"epochs": args.epochs}, limit_train=args.limit_train,
                              backend=args.backend, device=args.device, workers=args.workers,
                              on_event=lambda e: e["event"] == "done" and print(
                                  f"{e['run']}: {e['state']}", file=sys.stderr, flush=True))
    except TrainerError as e:  # a bad config path, an unavailable backend: a message
        sys.exit(f"error: {e}")
    table = (markdown(summary) + f"\n\nMeasured {time.strftime('%Y-%m-%d')} on "
             f"{platform.machine()}, backend {args.backend}, seeds {args.seeds}, Python "
             f"{platform.python_version()}; the runs are in {summary['group']}.\n")
    print(table)
    if args.out:
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
