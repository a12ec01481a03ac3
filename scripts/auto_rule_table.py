"""BENCHMARKS.md's `--backend auto` table from `trainer bench` reports: per config and batch
size, numpy's BLAS threads, the medians of numpy, numba and jax (s/epoch), their ratios to
numpy, the fastest, and what `--backend auto` picks here for that config (run/auto.py's rule,
asked, not copied).

    python scripts/auto_rule_table.py bench-default.json bench-mnist-99.3.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.core.config import Config  # noqa: E402
from trainer.run.auto import choose_backend, weights  # noqa: E402

TARGETS = ("numpy", "numba", "jax")


def rows(report: dict) -> list[str]:
    cfg = Config.from_dict(report["config"])
    pick = choose_backend(cfg)[0]
    times: dict[int, dict[str, float]] = {}
    threads: dict[int, str] = {}  # BLAS threads numpy ran with ("-": the library's own)
    for r in report["results"]:
        if r["target"] in TARGETS and r.get("seconds"):
            times.setdefault(r["batch_size"], {})[r["target"]] = r["seconds"]
            if r["target"] == "numpy":
                threads[r["batch_size"]] = str(r.get("threads") or "-")
    out = []
    for batch, t in sorted(times.items()):
        cells = [f"{t[k]:.3f}" if k in t else "-" for k in TARGETS]
        ratios = [f"{t[k] / t['numpy']:.2f}" if k in t and "numpy" in t else "-"
                  for k in TARGETS[1:]]
        fastest = min(t, key=t.__getitem__)
        out.append(f"| {cfg.describe()} | {weights(cfg):,} | {batch} | {threads.get(batch, '-')} "
                   f"| {' | '.join(cells)} | "
                   f"{' | '.join(ratios)} | {fastest} | {pick} |")
    return out


def main() -> None:
    print("| network | weights | batch | thr | numpy | numba | jax | numba ÷ numpy | jax ÷ numpy "
          "| fastest | auto picks |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for path in sys.argv[1:]:
        for row in rows(json.loads(Path(path).read_text())):
            print(row)


if __name__ == "__main__":
    main()
