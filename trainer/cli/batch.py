"""`trainer train CONFIG... --seeds N`: a batch of runs, a line per run, a table per config."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from trainer.batch import Event, parse_seeds, train_batch
from trainer.cli.cluster import RunTable
from trainer.cli.console import console, err_console, print_json, say_auto, shown
from trainer.cli.display import epoch_line, load_data
from trainer.cli.track import tracking
from trainer.errors import UsageError
from trainer.run.results import EpochStats, Interrupted
from trainer.track import BatchLog, train_samples


def batch_cli(configs: list[Path], seeds: str | None, workers: int, overrides: dict[str, Any],
              options: dict[str, Any], stop_requested: Any, quiet: bool, as_json: bool,
              log: tuple[str, ...] = ()) -> None:
    """Run the batch (`options`: train_batch's keywords from the command line), print its
    progress and summary; exit 1 if a run diverged, 128 + the signal if stopped."""
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if options.get("cluster") is not None and workers != 1:
        raise UsageError("--workers starts local processes; on a cluster each Dask worker "
                         "takes as many runs as its --nthreads")
    # worker processes load it again
    data = load_data(options["data_dir"], show=not as_json, dataset=options["dataset"])
    where: dict[str, Any] = {}
    printer = _printer(quiet, as_json)
    logs: BatchLog | None = None  # with --log: the runs' trackers, fed the same events

    def on_group(path: Path, resumed: bool) -> None:
        where["group"] = path
        if not as_json:
            console.print(f"{'Resuming' if resumed else 'Starting'} the batch in "
                          f"{shown(str(path))}", soft_wrap=True)
        if logs is not None:
            logs.on_group(path, resumed)

    def on_event(event: Event) -> None:
        printer(event)
        if logs is not None:
            logs.on_event(event)

    # a cluster's runs train side by side: a live table of them where there is a terminal
    table = RunTable(console) if options.get("cluster") is not None and console.is_terminal \
        and not (quiet or as_json) else None
    if table is not None:
        printer = table.on_event
    with tracking(log) as session:
        if session is not None:
            logs = BatchLog(session, lambda cfg: train_samples(cfg, len(data.train_labels),
                                                               options["limit_train"]))
        try:
            with table or contextlib.nullcontext():
                summary = train_batch(configs, seed_list, overrides=overrides, data=data,
                                      workers=workers, on_event=on_event,
                                      stop_requested=stop_requested, on_group=on_group,
                                      on_backend=lambda name, why: say_auto(name, why,
                                                                            as_json),
                                      **options)
        except Interrupted as e:
            err_console.print(f"Stopped: finished runs are kept, the running ones checkpointed "
                              f"(any that could not be is said above) in "
                              f"{shown(str(where.get('group', '')))}. Run the same command "
                              f"again to continue.", soft_wrap=True)
            raise typer.Exit(code=e.exit_code) from None
        finally:
            if logs is not None:
                logs.finish()
        _finish(summary, as_json)


def _finish(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(summary)
    else:
        print_summary(summary)
    diverged = [m["run_dir"] for row in summary["configs"] for m in row["members"]
                if m["state"] == "diverged"]
    if diverged:
        err_console.print(f"[bold red]error:[/] {len(diverged)} run(s) diverged (their "
                          f"metrics.json says where): {shown(', '.join(diverged))}",
                          soft_wrap=True)
    for failure in summary.get("failed", []):
        err_console.print(f"[bold red]error:[/] {shown(failure['run'])} failed on "
                          f"{shown(failure['worker'])}: {shown(failure['message'])}",
                          soft_wrap=True)
    if diverged or summary.get("failed"):
        if summary.get("failed"):
            err_console.print("The same command again trains the failed runs.")
        raise typer.Exit(code=1)


def _printer(quiet: bool, as_json: bool) -> Any:
    """The on_event callback: a line per run started, kept or done; per epoch unless quiet."""
    def on_event(event: Event) -> None:
        if as_json:
            return
        run, kind = shown(event["run"]), event["event"]
        on = f" on {shown(event['worker'])}" if event.get("worker") else ""
        if kind == "start":
            where = event["resume_epoch"]
            console.print(f"{run}: " + (f"resuming at epoch {where}" if where else "training")
                          + on, soft_wrap=True)
        elif kind in ("failed", "cancelled", "stopped"):
            why = f": {shown(event['message'])}" if event.get("message") else ""
            console.print(f"{run}: {kind}{on}{why}", soft_wrap=True)
        elif kind == "epoch" and not quiet:
            stats = EpochStats(**event["stats"])
            console.print(f"  {run}  {epoch_line(stats, event['epochs'])}", soft_wrap=True)
        elif kind in ("done", "kept"):
            console.print(f"{run}: {_outcome(event)}" + (" (kept)" if kind == "kept" else ""),
                          soft_wrap=True)
    return on_event


def _outcome(event: Event) -> str:
    if event["state"] == "diverged":
        return "[red]diverged[/]" + (f": {shown(event['message'])}" if "message" in event else "")
    accuracy, seconds = event.get("test_accuracy"), event.get("seconds")
    text = f"test accuracy {accuracy:.2%}" if accuracy is not None else "finished"
    return text + (f" in {seconds:.1f} s" if seconds is not None else "")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def print_summary(summary: dict[str, Any]) -> None:
    """One row per config: runs, test accuracy mean ± std, min, max, mean seconds a run."""
    table = Table(title=f"Test accuracy by config: {shown(summary['name'])}",
                  title_justify="left")
    # the figures never wrap (a folded "98.06% ±" would read as another number); names fold
    for column, justify, fold in (("config", "left", True), ("network", "left", True),
                                  ("runs", "right", False), ("mean ± std", "right", False),
                                  ("min", "right", False), ("max", "right", False),
                                  ("s/run", "right", False)):
        table.add_column(column, justify=justify, overflow="fold",  # type: ignore[arg-type]
                         no_wrap=not fold)
    for row in summary["configs"]:
        acc, seconds = row["test_accuracy"], row["seconds"]["mean"]
        runs = f"{row['finished']}/{row['runs']}" if row["finished"] != row["runs"] else \
            str(row["runs"])
        mean = _pct(acc["mean"]) + (f" ± {100 * acc['std']:.2f}" if acc["std"] is not None
                                    else "")
        table.add_row(shown(row["config"]), row["network"], runs, mean, _pct(acc["min"]),
                      _pct(acc["max"]), "-" if seconds is None else f"{seconds:.3g}")
    console.print(table)
    console.print(f"Group directory: {shown(summary['group'])}", soft_wrap=True)
    console.print("  summary.json, summary.csv, history.svg, and a run directory per run")
