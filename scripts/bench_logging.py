"""Benchmark: what `--log tensorboard` and `--log mlflow` add to training time.

The default config trains R rounds x 3 variants, interleaved (the order rotates each round):
no logging, `--log tensorboard`, and `--log mlflow` against a local `mlflow server` (SQLite,
127.0.0.1) that this script starts and stops. Each run is `trainer train --json` as a user
runs it; its metrics.json gives the training time (total_seconds: every epoch with its
callbacks, and the final evaluation) and each epoch's seconds. Medians per variant, and their
ratios to no logging; the wall time of the whole command (start-up, writing the run, the
loggers' end) is shown too. Writes the table as JSON.

    flock /tmp/trainer-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        python scripts/bench_logging.py [--epochs 5] [--rounds 5] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

VARIANTS = {"none": [], "tensorboard": ["--log", "tensorboard"], "mlflow": ["--log", "mlflow"]}


def start_mlflow(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("mlflow server did not start")


def train(variant: str, run_dir: Path, epochs: int, env: dict[str, str]) -> dict[str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "trainer", "train", "--epochs", str(epochs),
                           "--run-dir", str(run_dir), "--json", *VARIANTS[variant]],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0 or "could not log" in done.stderr:  # a logger that failed
        sys.exit(f"{variant}: exit {done.returncode}: {done.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"train": metrics["total_seconds"], "wall": wall,
            "epoch": statistics.median(e["seconds"] for e in metrics["epochs"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json-out", type=Path, default=Path("bench_logging.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-logging-") as tmp:
        root = Path(tmp)
        server, url = start_mlflow(root)
        env = os.environ | {"MLFLOW_TRACKING_URI": url, "MLFLOW_EXPERIMENT_NAME": "bench"}
        env.pop("TRAINER_LOG", None)
        results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        try:
            names = list(VARIANTS)
            for r in range(args.rounds):
                for variant in names[r % 3:] + names[:r % 3]:
                    run = train(variant, root / f"{variant}-{r}", args.epochs, env)
                    results[variant].append(run)
                    print(f"round {r + 1} {variant:<11} train {run['train']:.3f} s  epoch "
                          f"{run['epoch']:.3f} s  wall {run['wall']:.2f} s", flush=True)
            cost = {v: callback_cost(v, root / f"calls-{v}", url) for v in VARIANTS if v != "none"}
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    report(results, cost, args)


def callback_cost(variant: str, run_dir: Path, url: str, calls: int = 200) -> float:
    """Microseconds the training thread spends in the tracker's on_epoch (the MLflow call
    itself runs on the outbox's thread), median of `calls`, in this process."""
    from trainer import Config
    from trainer.track import Tracking

    os.environ |= {"MLFLOW_TRACKING_URI": url, "MLFLOW_EXPERIMENT_NAME": "bench-calls"}
    run_dir.mkdir()
    tracking = Tracking((variant,), warn=print)
    run = tracking.run(run_dir, "calls", Config.from_dict(json.loads(
        (Path(__file__).parent.parent / "configs" / "default.json").read_text())), 60000)
    times = []
    for epoch in range(1, calls + 1):
        row = {"epoch": epoch, "loss": 0.3, "train_accuracy": 0.9, "test_accuracy": 0.9,
               "seconds": 0.25, "val_accuracy": None, "learning_rate": 0.01}
        started = time.perf_counter()
        run.on_epoch(row)
        times.append(time.perf_counter() - started)
    if run.tb is not None:
        run.tb.close()
    tracking.close()
    return statistics.median(times) * 1e6


def report(results: dict[str, list[dict[str, float]]], cost: dict[str, float],
           args: argparse.Namespace) -> None:
    med = {v: {k: statistics.median(r[k] for r in runs) for k in ("train", "epoch", "wall")}
           for v, runs in results.items()}
    base = med["none"]
    print(f"\n{args.epochs} epochs, {args.rounds} rounds interleaved; medians\n")
    print("| logging | training (s) | vs none | epoch (s) | vs none | on_epoch (us) | "
          "command wall (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for v, m in med.items():
        print(f"| {v} | {m['train']:.3f} | {m['train'] / base['train']:.3f} | "
              f"{m['epoch']:.3f} | {m['epoch'] / base['epoch']:.3f} | "
              f"{cost.get(v, 0.0):.0f} | {m['wall']:.2f} |")
    args.json_out.write_text(json.dumps({"epochs": args.epochs, "rounds": args.rounds,
                                         "runs": results, "medians": med,
                                         "on_epoch_us": cost}, indent=2) + "\n")
    print(f"\n{args.json_out} written")


if __name__ == "__main__":
    main()
