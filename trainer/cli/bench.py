"""`trainer bench`: time epochs per backend and batch size, optionally against peer libraries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from trainer.bench.run import NOT_LEARNING, available_targets, not_covered, run_bench
from trainer.cli.console import cli_errors, console, load_config, shown
from trainer.cli.options import DatasetOpt
from trainer.core.losses import DIVERGED_NATS, untrained_loss
from trainer.data.dataset import load_dataset
from trainer.data.datasets import get_spec
from trainer.errors import DataError, UsageError
from trainer.fileio import atomic_write_json, check_writable

Opt = typer.Option


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UsageError(f"{option} must be a comma-separated list of positive integers, "
                         f"got {text!r}")
    return values


def bench_cmd(
    config: Annotated[Path | None, typer.Argument(help="JSON config (default: built-in)")] = None,
    batch_sizes: Annotated[str, Opt(help="comma-separated batch sizes")] = "32,128,512,4096",
    backends: Annotated[str | None, Opt(help="comma-separated (default: all that load)")] = None,
    peers: Annotated[bool, Opt("--peers", help="also time PyTorch (eager, compiled), JAX, "
                                               "scikit-learn and the GEMM floor on the "
                                               "config's features, interleaved")] = False,
    epochs: Annotated[int, Opt(min=1, help="timed epochs per run (median reported)")] = 3,
    warmup: Annotated[int, Opt(min=0, help="untimed epochs first")] = 1,
    rounds: Annotated[int, Opt(min=1, help="interleaved rounds of every target")] = 1,
    limit_train: Annotated[int | None, Opt(min=1, help="train on the first N images")] = None,
    keep_blas_env: Annotated[bool, Opt("--keep-blas-env", help="keep OPENBLAS_CORETYPE and "
                                       "OPENBLAS_L2_SIZE (unset by default)")] = False,
    out: Annotated[Path, Opt(help="the JSON report (default: bench.json in the current "
                                  "folder)")] = Path("bench.json"),
    dataset: DatasetOpt = None,
) -> None:
    """Time training epochs on real MNIST (or --dataset); print a table and write a JSON
    report."""
    with cli_errors():
        check_writable(out, "--out")  # before the benchmark, not after it
        cfg = load_config(config)
        dataset = get_spec(dataset or "mnist").name  # each worker loads it (fetched if need be)
        sizes = _ints(batch_sizes, "--batch-sizes")
        _check_batch_sizes(sizes, dataset, limit_train)
        names = [n.strip() for n in backends.split(",") if n.strip()] if backends else None
        targets = available_targets(names, peers)  # none named: every one that loads
        for target, why in not_covered(targets, cfg).items():
            console.print(f"{target}: not timed: {shown(why)}", soft_wrap=True)
            targets.remove(target)
        if not targets:
            raise UsageError("nothing left to time: name other --backends or add --peers")
        table = bench_table(f"s/epoch, median of {epochs} x {rounds} after {warmup} warm-up",
                            targets[0])
        flagged: dict[str, list[int]] = {"diverged": [], "not_learning": []}

        def show(row: dict[str, Any]) -> None:
            if "cannot" in row or "error" in row:  # a row all the same: never left out
                why = (f"can't express: {row['cannot']}" if "cannot" in row
                       else f"failed: {row['error']}")
                table.add_row(str(row["batch_size"]), f"{row['target']}: {shown(why)}",
                              *[""] * 7, style="yellow" if "cannot" in row else "red")
                return
            threads, loss = row.get("threads"), row.get("loss")
            bad = False
            for flag, sizes_flagged in flagged.items():
                if row.get(flag):
                    bad = True
                    if row["batch_size"] not in sizes_flagged:
                        sizes_flagged.append(row["batch_size"])
            table.add_row(str(row["batch_size"]), row["target"], f"{row['seconds']:.3f}",
                          f"{row['first_epoch']:.2f}",
                          f"{row['samples_per_s'] / 1000:,.0f}", f"{row['peak_rss_mb']:.0f}",
                          "-" if threads is None else str(threads),
                          f"{row['vs_ours']:.2f}" if row.get("vs_ours") else "",
                          _loss_text(loss, row.get("diverged", False), bad))

        with console.status("benchmarking (each run in its own process)..."):
            report = run_bench(cfg, batch_sizes=sizes, targets=targets, epochs=epochs,
                               warmup=warmup, rounds=rounds, limit_train=limit_train,
                               keep_blas_env=keep_blas_env, on_result=show, dataset=dataset)
        console.print(table)
        console.print(LEGEND, highlight=False)
        for line in summary(report):
            console.print(line, soft_wrap=True, highlight=False)
        rate = f"learning rate ({cfg.learning_rate}, {cfg.loss_reduction} loss)"
        if flagged["diverged"]:
            console.print(f"[yellow]At batch {', '.join(map(str, flagged['diverged']))} "
                          f"training diverged with this config's {rate}: the last epoch's mean "
                          f"training loss (\"loss\") is not finite or a cross-entropy over "
                          f"{DIVERGED_NATS:g} nats, so those rows time a diverged run.[/]",
                          soft_wrap=True)
        if flagged["not_learning"]:
            bound = NOT_LEARNING * (untrained_loss(cfg.loss, cfg.sizes[-1]) or 0.0)
            console.print(f"[yellow]At batch {', '.join(map(str, flagged['not_learning']))} "
                          f"the network does not learn with this config's {rate}: the last "
                          f"epoch's mean training loss (\"loss\") is over twice an untrained "
                          f"network's ({bound:.2f}), so those rows time a run that is not "
                          f"training.[/]", soft_wrap=True)
        atomic_write_json(out, report)
        console.print(f"Wrote the JSON report to {shown(str(out.resolve()))}", soft_wrap=True)


def _check_batch_sizes(sizes: list[int], dataset: str, limit_train: int | None) -> None:
    """A batch larger than the training set is the whole set: its row would time another
    batch size than it names (and could be called the fastest). Refused up front."""
    try:  # from the cache only: a dataset not fetched yet is fetched by the workers
        full: int | None = len(load_dataset(dataset=dataset, fetch=False).train_labels)
    except DataError:
        full = None
    images = min(n for n in (full, limit_train, max(sizes)) if n is not None)
    too_big = [s for s in sizes if s > images]
    if too_big:
        where = dataset if full is not None and images == full else "--limit-train"
        raise UsageError(f"--batch-sizes {', '.join(map(str, too_big))}: more than the "
                         f"{images:,} training images ({where}); a batch is at most the whole "
                         f"set, so choose batch sizes up to {images:,}")


def summary(report: dict[str, Any]) -> list[str]:
    """The lines under the table: the machine, the libraries' versions, what to pick."""
    cpu = report["machine"]["cpu"]
    lines = [f"CPU: {cpu['model']}, {cpu['cores']} cores, {cpu['simd']}",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    seconds = {(r["batch_size"], r["target"]): r["seconds"] for r in report["results"]
               if r.get("seconds")}
    by_target: dict[str, list[str]] = {}  # each backend once, with the batch sizes it won
    for bs, target in sorted(report["fastest"].items()):
        by_target.setdefault(target, []).append(f"{bs} ({seconds[bs, target]:.3f} s)")
    if by_target:
        lines.append("Fastest of ours here: " + "; ".join(
            f"{target} at batch {', '.join(won)}" for target, won in by_target.items()))
    for bs, best in sorted(report.get("fastest_overall", {}).items(), key=lambda i: int(i[0])):
        line = f"Fastest at batch {bs}: {best['target']} ({best['seconds']:.3f} s)"
        if "ours_vs_peer" in best:
            peer = ("it" if best["fastest_peer"] == best["target"] else
                    f"the fastest peer, {best['fastest_peer']} ({best['peer_seconds']:.3f} s)")
            line += f"; ours: {best['ours']} {best['ours_vs_peer']:.2f}x {peer}"
        lines.append(line)
    return lines


def _loss_text(loss: float | None, diverged: bool, flagged: bool) -> str:
    if loss is None:  # scikit-learn and the floor report none; a diverged run's was not finite
        return "[red]not finite[/]" if diverged else ""
    return f"[red]{loss:.3g}[/]" if flagged else f"{loss:.3g}"


# under the table, one line at 80 columns: what the short headers mean
LEGEND = "1st s: the first epoch, compiling included; MB: peak memory; thr: BLAS threads"


def bench_table(title: str, first: str = "numpy") -> Table:
    """The benchmark's table, laid out to fit 80 columns: short headers (LEGEND says what
    they mean), figures never broken, the target's name folded where it is long. `first`:
    the target the others' times are divided by."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("batch", justify="right", no_wrap=True)
    table.add_column("target", overflow="fold", min_width=12, ratio=1)
    for col in ("s/epoch", "1st s", "kimg/s", "MB", "thr", f"÷{first}"[:8], "loss"):
        table.add_column(col, justify="right", no_wrap=True)
    return table
