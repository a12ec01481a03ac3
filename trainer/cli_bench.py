"""`trainer bench`: time epochs per backend and batch size, optionally against peer libraries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from trainer.bench import available_targets, run_bench
from trainer.config import Config, default_config
from trainer.console import cli_errors, console
from trainer.errors import UsageError
from trainer.fileio import atomic_write_json

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
    peers: Annotated[bool, Opt("--peers", help="also time scikit-learn, PyTorch, JAX "
                                               "and the GEMM floor, interleaved")] = False,
    epochs: Annotated[int, Opt(min=1, help="timed epochs per run (median reported)")] = 3,
    warmup: Annotated[int, Opt(min=0, help="untimed epochs first")] = 1,
    rounds: Annotated[int, Opt(min=1, help="interleaved rounds of every target")] = 1,
    limit_train: Annotated[int | None, Opt(min=1, help="train on the first N images")] = None,
    keep_blas_env: Annotated[bool, Opt("--keep-blas-env", help="keep OPENBLAS_CORETYPE and "
                                       "OPENBLAS_L2_SIZE (unset by default)")] = False,
    out: Annotated[Path, Opt(help="JSON report")] = Path("bench.json"),
) -> None:
    """Time training epochs on real MNIST; print a table and write a JSON report."""
    with cli_errors():
        cfg = Config.from_file(config) if config else default_config()
        sizes = _ints(batch_sizes, "--batch-sizes")
        names = [n.strip() for n in backends.split(",") if n.strip()] if backends else None
        targets = available_targets(names, peers)  # none named: every one that loads
        table = Table(title=f"s/epoch, median of {epochs} x {rounds} after {warmup} warm-up")
        for col in ("batch", "target", "s/epoch", "samples/s", "RSS MB", "threads", "÷ ours",
                    "loss"):
            table.add_column(col, justify="right", no_wrap=True)
        diverged_sizes: list[int] = []

        def show(row: dict[str, Any]) -> None:
            if "error" in row:
                console.print(f"[red]{row['target']} at batch {row['batch_size']}: "
                              f"{row['error']}[/]", soft_wrap=True)
                return
            threads, loss, bad = row.get("threads"), row.get("loss"), row.get("diverged")
            if bad and row["batch_size"] not in diverged_sizes:
                diverged_sizes.append(row["batch_size"])
            table.add_row(str(row["batch_size"]), row["target"], f"{row['seconds']:.3f}",
                          f"{row['samples_per_s']:,.0f}", f"{row['peak_rss_mb']:.0f}",
                          "default" if threads is None else str(threads),
                          f"{row['vs_ours']:.2f}" if row.get("vs_ours") else "",
                          "" if loss is None else f"[red]{loss:.3g}[/]" if bad else f"{loss:.3g}")

        with console.status("benchmarking (each run in its own process)..."):
            report = run_bench(cfg, batch_sizes=sizes, targets=targets, epochs=epochs,
                               warmup=warmup, rounds=rounds, limit_train=limit_train,
                               keep_blas_env=keep_blas_env, on_result=show)
        console.print(table)
        if diverged_sizes:
            sizes_text = ", ".join(map(str, diverged_sizes))
            console.print(f"[yellow]At batch {sizes_text} training diverged with this config's "
                          f"learning rate ({cfg.learning_rate}, {cfg.loss_reduction} loss): the "
                          "last epoch's mean training loss (\"loss\") is not finite or over "
                          "twice an untrained network's, so those rows time a diverged run.[/]",
                          soft_wrap=True)
        atomic_write_json(out, report)
        console.print(f"JSON report: {out}", soft_wrap=True)
