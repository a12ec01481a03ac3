"""The per-epoch validation inside a real training run, at several prediction chunk sizes:
milliseconds per evaluation, medians, interleaved.

    python scripts/bench_eval_chunk.py configs/mnist-99.3.json --backend numba \
        [--epochs 9] [--chunks 8192,1024,512] [--out eval_chunk.json]

network.predict evaluates in chunks of rows. After an epoch of training, a 5,000-row
validation forward in one chunk (its 16 MB activations fresh memory each time) took 0.04-0.35 s
on the 2-core VM, where the same forward in chunks of 1,024 rows took 0.034-0.043 s; measured
in isolation, or called again at once, both look alike: it is the first forward after an
epoch of training that is slow. So this script times that one, in a real run: after epoch e,
the validation forward in chunks of chunks[e % len(chunks)] rows (then the run's own).
A benchmark: run it under `flock /tmp/trainer-bench.lock`, with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset in its command (`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python
scripts/...`): NumPy's BLAS reads them when it loads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer import backends  # noqa: E402
from trainer.core.config import Config  # noqa: E402
from trainer.core.network import predict  # noqa: E402
from trainer.data.dataset import load_dataset  # noqa: E402
from trainer.run import loop  # noqa: E402
from trainer.run.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--chunks", default="8192,1024,512")
    parser.add_argument("--out", default="eval_chunk.json")
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    config = Config.from_file(args.config).replace(epochs=args.epochs)
    if not config.validation_split:
        raise SystemExit(f"{args.config} has no validation split to evaluate")
    times: dict[int, list[float]] = {c: [] for c in chunks}
    held_out = loop.Run._held_out

    def timed(run: loop.Run) -> tuple[float | None, float | None]:
        c = chunks[len(run.result.history) % len(chunks)]
        started = time.perf_counter()
        predict(run.params, run.config.activations, run.x_val, chunk=c)
        times[c].append(time.perf_counter() - started)
        return held_out(run)

    loop.Run._held_out = timed
    data = load_dataset()
    train(config, data, backends.load(args.backend))
    rows = [{"chunk": c, "median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t),
             "max_ms": 1e3 * max(t), "samples": len(t)} for c, t in times.items()]
    print(f"{args.config}, {args.backend}: the first validation forward after each of "
          f"{args.epochs} epochs, the chunk sizes in turn")
    print("| chunk rows | median ms | min ms | max ms |\n| ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['chunk']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | "
              f"{row['max_ms']:.1f} |")
    Path(args.out).write_text(json.dumps({"config": args.config, "backend": args.backend,
                                          "epochs": args.epochs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
