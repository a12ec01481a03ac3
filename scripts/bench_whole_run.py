"""Whole `trainer train` runs of one config on several backends, interleaved: wall seconds of the
process (start-up, data, compiling, training and every epoch's evaluation), medians, ratios.

    python scripts/bench_whole_run.py configs/mnist-99.3.json --backends numpy,numba,jax \
        [--epochs N] [--rounds R] [--seed S] [--out whole_run.json]

`trainer bench` times epochs of training alone; the issue's whole-run target (issue 31: the
fastest backend's whole mnist-99.3 train against NumPy's) counts everything a user waits for.
Each run is its own process, the backends taking turns round by round, so that a slow spell of
the machine falls on all of them. A benchmark: run it under `flock /tmp/trainer-bench.lock`;
it unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for the runs it times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLAS_TRAPS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def one_run(config: str, backend: str, epochs: int | None, seed: int) -> dict:
    """One `trainer train` process: its wall seconds and its test accuracy."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_TRAPS}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "trainer", "train", config, "--backend", backend,
               "--seed", str(seed), "--run-dir", str(Path(tmp) / "run"), "--quiet"]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        report = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    return {"seconds": seconds, "test_accuracy": report.get("test_accuracy"),
            "training_seconds": report.get("total_seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--backends", default="numpy,numba,jax")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="whole_run.json")
    args = parser.parse_args()
    names = args.backends.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            runs[name].append(one_run(args.config, name, args.epochs, args.seed))
            print(f"round {r + 1} {name}: {runs[name][-1]}", flush=True)
    rows = []
    for name in names:
        ok = [x["seconds"] for x in runs[name] if "seconds" in x]
        rows.append({"backend": name, "seconds": statistics.median(ok) if ok else None,
                     "runs": runs[name]})
    base = rows[0]["seconds"]
    print(f"\n{'backend':<8} {'s (median)':>11} {'÷' + names[0]:>8}  test accuracy")
    for row in rows:
        row["ratio"] = row["seconds"] / base if base and row["seconds"] else None
        accs = [x.get("test_accuracy") for x in row["runs"] if "seconds" in x]
        print(f"{row['backend']:<8} {row['seconds'] or float('nan'):>11.1f} "
              f"{row['ratio'] or float('nan'):>8.2f}  {accs}")
    Path(args.out).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"), "config": args.config, "epochs": args.epochs,
        "rounds": args.rounds, "seed": args.seed, "cpu": _cpu(), "results": rows}, indent=2))
    print(f"Wrote {args.out}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
