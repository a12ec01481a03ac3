"""A batch on a local Dask cluster against the same batch in local worker processes.

12 runs (the default config, 3 epochs, seeds 0 to 11) on real MNIST: `--workers 2` (two local
processes) against a cluster of two single-thread `dask worker`s on 127.0.0.1 (started once,
before the timings, and reported apart), interleaved, medians of --repeats (3). Reports the
batch's wall time, the ratio cluster / local (target <= 1.10), the median delay from the
batch's start to a run's first step (queueing behind the other runs included), the shortest
such delay (the start-up) and, on the cluster, the median from a run's task being submitted
to its worker starting it.

    flock /tmp/trainer-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python scripts/bench_cluster.py [--repeats 3] [--out bench-cluster.json]

(from the repository root, trainer importable: installed, or PYTHONPATH=.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.batch import Cluster, train_batch
from trainer.data.dataset import load_dataset

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "default.json"
SEEDS = list(range(12))


def start_cluster(folder: Path) -> tuple[list[subprocess.Popen], str, float]:
    """A scheduler and two single-thread workers on 127.0.0.1; and the seconds it took."""
    t0 = time.perf_counter()
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    log = open(folder / "cluster.log", "wb")  # noqa: SIM115 (the processes write it)
    file = folder / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                               "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                               "--scheduler-file", str(file)], stdout=log, stderr=log, env=env)]
    while not file.exists():
        time.sleep(0.05)
    address = json.loads(file.read_text())["address"]
    procs += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                "--host", "127.0.0.1", "--nthreads", "1", "--dashboard-address",
                                "127.0.0.1:0"], stdout=log, stderr=log, env=env)
              for _ in range(2)]
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        client.wait_for_workers(2)
    return procs, address, time.perf_counter() - t0


def one_batch(group: Path, cluster: Cluster | None) -> dict[str, float]:
    """Wall seconds of the batch; from its start (the call, as a user's command) to each run's
    first step, the median (queueing behind the other runs included) and the shortest (the
    start-up: processes or connection, data, dispatch); on the cluster also the median from a
    task's submission to its worker starting it."""
    submitted: dict[str, float] = {}
    delays: list[float] = []
    dispatch: list[float] = []
    t0 = time.time()

    def on_event(event: dict) -> None:
        now = event.get("time", time.time())  # a cluster worker stamps its own events
        if event["event"] == "queued":
            submitted[event["run"]] = now
        elif event["event"] == "start":
            delays.append(now - t0)
            if event["run"] in submitted:
                dispatch.append(now - submitted[event["run"]])

    summary = train_batch([CONFIG], SEEDS, overrides={"epochs": 3}, run_dir=group,
                          workers=1 if cluster else 2, cluster=cluster, on_event=on_event)
    wall = time.time() - t0
    assert summary["complete"] and len(delays) == len(SEEDS), summary
    return {"seconds": wall, "first_step_delay": statistics.median(delays),
            "startup_delay": min(delays),
            "dispatch_delay": statistics.median(dispatch) if dispatch else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-cluster.json"))
    args = parser.parse_args()
    load_dataset()  # fetched before any timing, if it must be
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        folder = Path(tmp)
        procs, address, started = start_cluster(folder)
        results: dict[str, list[dict[str, float]]] = {"local": [], "cluster": []}
        try:
            for i in range(args.repeats):
                order = ("local", "cluster") if i % 2 == 0 else ("cluster", "local")
                for kind in order:
                    cluster = Cluster(address) if kind == "cluster" else None
                    results[kind].append(one_batch(folder / f"{kind}-{i}", cluster))
                    print(f"  {kind:<8} {results[kind][-1]['seconds']:6.2f} s", flush=True)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
    report(results, started, args.out)


def report(results: dict[str, list[dict[str, float]]], started: float, out: Path) -> None:
    med = {kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
           for kind, runs in results.items()}
    ratio = med["cluster"]["seconds"] / med["local"]["seconds"]
    print(f"\n12 runs (default config, 3 epochs, seeds 0-11), medians of "
          f"{len(results['local'])}; cluster started in {started:.1f} s (not counted)")
    print("| variant | wall s | start to first step, median s | shortest s | submission to "
          "start, median s |\n| --- | --- | --- | --- | --- |")
    for kind, label in (("local", "--workers 2"), ("cluster", "2 dask workers x 1 thread")):
        row = med[kind]
        dispatch = "-" if row["dispatch_delay"] != row["dispatch_delay"] else \
            f"{row['dispatch_delay']:.2f}"
        print(f"| {label} | {row['seconds']:.2f} | {row['first_step_delay']:.2f} | "
              f"{row['startup_delay']:.2f} | {dispatch} |")
    print(f"cluster / local: {ratio:.3f} (target <= 1.10)")
    out.write_text(json.dumps({"results": results, "medians": med, "ratio": ratio,
                               "cluster_start_seconds": started,
                               "cpu": platform.processor() or platform.machine(),
                               "load": os.getloadavg()}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
