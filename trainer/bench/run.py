"""`trainer bench`: epoch times per backend and batch size, and against peer libraries.

Every measurement runs in its own subprocess (so NumPy's and SciPy's BLAS never meet, and one
library's threads never linger into another's timing), one warm-up epoch then `epochs` timed
ones, the targets interleaved round by round; the table reports medians.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from trainer import backends
from trainer.core.config import Config, default_config
from trainer.core.losses import diverged, untrained_loss
from trainer.data.dataset import load_dataset
from trainer.errors import UsageError

BLAS_TRAPS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # force an old, slow kernel when set


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one target for warm-up + timed epochs, in this process; return its figures:
    `times` per timed epoch and `train_samples`, the samples each epoch trained on."""
    config = bench_config(Config.from_dict(spec["config"]), spec["batch_size"],
                          spec["warmup"] + spec["epochs"])
    data = load_dataset(dataset=spec.get("dataset", "mnist")).limit(spec.get("limit_train"), 0)
    target = spec["target"]
    info: dict[str, Any] = {}
    if target.startswith("peer:"):
        from trainer.bench.peers import failure, train_peer

        try:
            run = train_peer(target[5:], config, data, config.epochs)
        except Exception as e:  # noqa: BLE001 - its row says why (torch.compile, say)
            return {"error": failure(e)}
        times = run.times
        info["train_samples"] = len(data.train_labels)
        if run.loss is not None:
            info["loss"] = run.loss
    else:
        from trainer.run.results import Engine
        from trainer.run.train import train

        backend = backends.load(target, spec.get("device"))
        result = train(config, data, backend,
                       engine=Engine(blas_threads=spec.get("blas_threads", "auto")))
        times = [h.seconds for h in result.history]
        info["total_seconds"] = result.total_seconds  # compiling included
        info["threads"] = result.blas_threads
        info["train_samples"] = result.train_samples
        info["loss"] = result.history[-1].loss  # the last epoch's mean training loss
    try:
        import threadpoolctl

        info["blas"] = [{k: lib.get(k) for k in ("internal_api", "version", "architecture",
                                                  "num_threads", "filepath")}
                        for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    except ImportError:
        pass
    # the first epoch apart: it includes compiling (jax, our own and the peers')
    return {"times": times[spec["warmup"]:], "first_epoch": times[0],
            "peak_rss_mb": _peak_rss_mb(), **info}


def bench_config(config: Config, batch_size: int, epochs: int) -> Config:
    """The config every target of a row trains: its batch size and epochs, on the whole
    training set (a validation split held out, and early stopping on it, are dropped: no
    target evaluates anything inside a timed epoch, and all train on the same rows)."""
    return config.replace(batch_size=batch_size, epochs=epochs, validation_split=0.0,
                          early_stopping_patience=None)


def _peak_rss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _run_worker(spec: dict[str, Any], keep_blas_env: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if keep_blas_env or k not in BLAS_TRAPS}
    proc = subprocess.run([sys.executable, "-m", "trainer.bench.run", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def available_targets(names: list[str] | None, peers: bool) -> list[str]:
    import importlib.util

    chosen = names or [n for n in backends.NAMES if backends.status(n).available]
    for name in chosen:
        if name not in backends.NAMES:
            raise UsageError(f"unknown backend {name!r}; choose from {', '.join(backends.NAMES)}")
    if peers:
        from trainer.bench.peers import PEERS

        chosen += [f"peer:{p}" for p, peer in PEERS.items()
                   if importlib.util.find_spec(peer.library) is not None]
    return chosen


def not_covered(targets: list[str], config: Config) -> dict[str, str]:
    """The targets that would train `config` on another backend's step, with the reason: a
    backend whose fused kernel (Backend.fused: numba) does not cover the config runs NumPy's
    step, so its time would be NumPy's under another name."""
    from trainer.core.step import select_step

    found = {}
    for target in targets:
        if target.startswith("peer:"):
            continue
        try:
            backend = backends.load(target)
        except ImportError:  # not here: its worker says so in the table
            continue
        why = select_step(config, backend).fallback
        if why is not None:
            found[target] = f"it trains this config with NumPy's step ({why})"
    return found


def run_bench(config: Config | None = None, *, batch_sizes: list[int], targets: list[str],
              epochs: int = 3, warmup: int = 1, rounds: int = 1, limit_train: int | None = None,
              keep_blas_env: bool = False, on_result: Any = None,
              dataset: str = "mnist") -> dict[str, Any]:
    from trainer.bench.peers import peers_that_cannot

    config = config or default_config()
    cannot = peers_that_cannot(targets, config)
    timed = [t for t in targets if t not in cannot]
    rows = []
    for bs in batch_sizes:
        samples: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
        for _ in range(rounds):
            for target in timed:  # interleaved: a slow spell of the machine hits every target
                spec = {"config": config.to_dict(), "batch_size": bs, "target": target,
                        "epochs": epochs, "warmup": warmup, "limit_train": limit_train,
                        "dataset": dataset}
                samples[target].append(_run_worker(spec, keep_blas_env))
        base = None
        for target in targets:
            if target in cannot:  # a row that says so: never left out silently
                row = {"target": target, "batch_size": bs, "cannot": cannot[target]}
                rows.append(row)
                if on_result:
                    on_result(row)
                continue
            row = _summarise(target, bs, samples[target])
            if target == targets[0]:
                base = row.get("seconds")
            # each target's time divided by ours (the first target, numpy by default)
            row["vs_ours"] = row["seconds"] / base if base and row.get("seconds") else None
            row |= judge(config, row.get("loss"))
            if row.get("loss") is not None and not math.isfinite(row["loss"]):
                row["loss"] = None  # the report is strict JSON: "diverged" says what it was
            rows.append(row)
            if on_result:
                on_result(row)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": _machine(),
            "versions": versions(targets), "config": config.to_dict(), "dataset": dataset,
            "epochs": epochs, "warmup": warmup, "rounds": rounds,
            "blas_env_unset": not keep_blas_env,
            "fastest": fastest(rows), "fastest_overall": fastest_overall(rows),
            "results": rows}


def fastest(rows: list[dict[str, Any]]) -> dict[int, str]:
    """Our fastest backend at each batch size, among the rows that trained (not diverged, and
    learning): what to pick on this machine."""
    best: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["target"].startswith("peer:") or not _trained(row):
            continue
        if row["batch_size"] not in best or row["seconds"] < best[row["batch_size"]]["seconds"]:
            best[row["batch_size"]] = row
    return {bs: row["target"] for bs, row in best.items()}


def _trained(row: dict[str, Any]) -> bool:
    return bool(row.get("seconds")) and not row.get("diverged") and not row.get("not_learning")


def fastest_overall(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """At each batch size: the fastest row that trained, ours or a peer's (the GEMM floor is
    a bound, not a trainer), and the fastest of ours over the fastest peer."""
    found: dict[int, dict[str, Any]] = {}
    for bs in sorted({r["batch_size"] for r in rows}):
        here = [r for r in rows if r["batch_size"] == bs and _trained(r)
                and r["target"] != "peer:gemm-floor"]
        if not here:
            continue
        best = min(here, key=lambda r: r["seconds"])
        peers = [r for r in here if r["target"].startswith("peer:")]
        ours = [r for r in here if not r["target"].startswith("peer:")]
        entry: dict[str, Any] = {"target": best["target"], "seconds": best["seconds"]}
        if peers and ours:
            peer, mine = (min(rs, key=lambda r: r["seconds"]) for rs in (peers, ours))
            entry |= {"fastest_peer": peer["target"], "peer_seconds": peer["seconds"],
                      "ours": mine["target"], "ours_vs_peer": mine["seconds"] / peer["seconds"]}
        found[bs] = entry
    return found


def versions(targets: list[str]) -> dict[str, str]:
    """The installed version of each library the targets time (ours and the peers')."""
    from importlib.metadata import packages_distributions, version

    modules = {"numpy"}
    for target in targets:
        if target.startswith("peer:"):
            from trainer.bench.peers import PEERS

            modules.add(PEERS[target[5:]].library)
        else:
            modules.add(target.replace("-", "_"))
    found = {}
    dists = packages_distributions()
    for module in sorted(modules):
        for dist in dists.get(module, [])[:1]:
            found[dist] = version(dist)
    return found


def cpu(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model and widest vector instructions (AVX-512, AVX2), from /proc/cpuinfo where
    there is one (Linux), else what the platform module says."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else (
        "neither AVX2 nor AVX-512" if flags else "unknown")
    return {"model": model, "cores": os.cpu_count(), "simd": simd}


def _summarise(target: str, bs: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error"] for r in runs if "error" in r]
    times = [t for r in runs for t in r.get("times", [])]
    row: dict[str, Any] = {"target": target, "batch_size": bs}
    if not times:
        return row | {"error": errors[0] if errors else "no timing"}
    seconds = statistics.median(times)
    timed = [r for r in runs if "times" in r]
    n = timed[0]["train_samples"]  # the same data in every round
    return row | {"seconds": seconds, "train_samples": n, "samples_per_s": n / seconds,
                  "all_seconds": times,
                  "first_epoch": statistics.median(r["first_epoch"] for r in timed),
                  "peak_rss_mb": max(r["peak_rss_mb"] for r in timed),
                  "threads": timed[0].get("threads"), "blas": timed[0].get("blas"),
                  "loss": timed[-1].get("loss")}  # every round trains the same (seeded) run


NOT_LEARNING = 2.0  # times an untrained network's loss


def judge(config: Config, loss: float | None) -> dict[str, bool]:
    """What a run's last-epoch mean training loss says of the row's timing: `diverged` (the
    training loop's own definition) or `not_learning` (a cross-entropy over twice an untrained
    network's: far worse than guessing, where a network early in training sits near it, just
    above or below). Either way the row times saturated, often denormal, arithmetic rather than
    training. Where a row has no loss (scikit-learn, the GEMM floor) nothing is said."""
    if loss is None:
        return {"diverged": False, "not_learning": False}
    untrained = untrained_loss(config.loss, config.sizes[-1])
    return {"diverged": diverged(loss, config.loss),
            "not_learning": untrained is not None and not loss <= NOT_LEARNING * untrained}


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "cpu": cpu(), "python": platform.python_version(),
            "numpy": np.__version__}


if __name__ == "__main__":  # a worker: python -m trainer.bench.run SPEC_JSON
    print(json.dumps(worker(json.loads(sys.argv[1]))))
