"""A/B two source trees of this project: epoch times of the NumPy backend, interleaved.

    python scripts/ab_trees.py OLD_TREE NEW_TREE [--batch-sizes 32,512] [--rounds 5]

Each measurement is `trainer bench`'s own worker (one warm-up epoch, then timed ones) in a
fresh process whose PYTHONPATH is that tree, the two trees alternating round by round so that a
slow spell of the machine hits both. Prints each tree's median s/epoch per batch size and the
ratio new / old, and writes them as JSON (--out). For checking that a refactor kept the speed;
`git worktree add` gives the old tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# this checkout's own constants (the trees measured are run in their own processes)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer.bench.run import BLAS_TRAPS  # noqa: E402

# the worker's module moved with the layout of 2026-11-30; either tree may be the older one
WORKER = ("import json, sys\n"
          "try:\n    from trainer.bench.run import worker\n"
          "except ImportError:\n    from trainer.bench import worker\n"
          "print(json.dumps(worker(json.loads(sys.argv[1]))))")


def measure(tree: Path, spec: dict) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in BLAS_TRAPS}
    env["PYTHONPATH"] = str(tree)
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {tree}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["times"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--batch-sizes", default="32,512")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement")
    parser.add_argument("--out", type=Path, default=Path("ab_trees.json"))
    args = parser.parse_args()
    # the default config as this checkout ships it (neither tree's code is imported here)
    config = json.loads((Path(__file__).resolve().parent.parent / "trainer"
                         / "default_config.json").read_text())
    results = []
    for size in (int(b) for b in args.batch_sizes.split(",")):
        times: dict[str, list[float]] = {"old": [], "new": []}
        spec = {"config": config, "batch_size": size, "target": "numpy", "epochs": args.epochs,
                "warmup": 1}
        for _ in range(args.rounds):
            for name in ("old", "new"):
                times[name] += measure(getattr(args, name), spec)
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        results.append({"batch_size": size, "old_s": old, "new_s": new, "ratio": new / old,
                        "old_all": times["old"], "new_all": times["new"]})
        print(f"batch {size:>5}: old {old:.4f} s/epoch, new {new:.4f} s/epoch, "
              f"new/old {new / old:.3f} (medians of {len(times['old'])} epochs each)",
              flush=True)
    partial = args.out.with_name(args.out.name + ".tmp")  # written whole, then renamed
    partial.write_text(json.dumps({"old": str(args.old), "new": str(args.new),
                                   "rounds": args.rounds, "results": results}, indent=2))
    os.replace(partial, args.out)


if __name__ == "__main__":
    main()
