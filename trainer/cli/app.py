"""The `trainer` command: thin wrappers over the Python API."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from trainer import backends
from trainer.cli.bench import bench_cmd
from trainer.cli.console import cli_errors, console, err_console, print_json, shown
from trainer.cli.data import data_app
from trainer.cli.display import load_data, print_report
from trainer.cli.helptext import tidy_help
from trainer.cli.options import BackendOpt, DataDirOpt, DatasetOpt, DeviceOpt, Opt, RunArg
from trainer.cli.predict import predict_cmd
from trainer.cli.runs import runs_app
from trainer.cli.runs_log import log_cmd as runs_log_cmd
from trainer.cli.serve import export_cmd, serve_cmd
from trainer.cli.sweep import sweep_cmd
from trainer.cli.train import train_cmd
from trainer.run.catalog import resolve_run
from trainer.run.inference import evaluate_model, load_run
from trainer.run.train import load_backend

app = typer.Typer(no_args_is_help=True,
                  help="Train fully connected networks on MNIST-like data, on any array backend.")


def _version(value: bool) -> None:
    if value:
        console.print(f"trainer {importlib.metadata.version('trainer')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, Opt("--version", callback=_version, is_eager=True,
                                 help="print the version and exit")] = False,
) -> None:
    """Train fully connected networks on MNIST-like data, on any array backend."""

JsonOpt = Annotated[bool, Opt("--json", help="print a JSON summary instead of the report")]


@contextlib.contextmanager
def eval_bar(live: bool, label: str):
    """A progress bar over the evaluated samples; yields the `on_chunk(done, total)` callback."""
    with Progress(console=console, disable=not live, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


app.command("train")(train_cmd)


@app.command("evaluate")
def evaluate_cmd(
    run: RunArg,
    backend: BackendOpt = "numpy",
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    dataset: DatasetOpt = None,
    limit_test: Annotated[int | None, Opt(min=1, help="test on the first N images only "
                                          "(default: as many as the run was tested on)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load a run's model and print its test report (on the dataset it was trained on, unless
    --dataset names another)."""
    with cli_errors():
        run_dir = resolve_run(run)
        model, metrics = load_run(run_dir)
        if dataset and model.dataset and dataset != model.dataset:
            err_console.print(f"note: the model was trained on {shown(model.dataset)}; "
                              f"evaluating it on {shown(dataset)}", soft_wrap=True)
        data = load_data(data_dir, show=not as_json,
                         dataset=dataset or model.dataset or "mnist")
        # a sweep's trial was tested on no images (0): then the whole test set
        limit = limit_test or metrics.get("test_samples") or None
        with eval_bar(not as_json and console.is_terminal, "evaluating") as on_chunk:
            rep, _ = evaluate_model(model, data, load_backend(backend, device),
                                    limit_test=limit if isinstance(limit, int) else None,
                                    on_chunk=on_chunk)
        recorded = metrics.get("test_accuracy")
        if as_json:
            print_json({"run_dir": str(run_dir), "backend": backend, "recorded_test_accuracy":
                        recorded} | rep.to_dict(model.class_names))
            return
        console.print(f"Model: {model.config.describe()}  (run {shown(str(run_dir))})",
                      soft_wrap=True)
        print_report(console, rep, model.class_names)
        if isinstance(recorded, float):
            console.print(f"Recorded at training: {recorded:.2%}")


app.command("predict")(predict_cmd)


@app.command("backends")
def backends_cmd(as_json: Annotated[bool, Opt("--json", help="print JSON instead")] = False
                 ) -> None:
    """List the array backends: whether they load here, their versions, devices and kernels."""
    statuses = [backends.status(name) for name in backends.NAMES]
    if as_json:
        print_json([dataclasses.asdict(status) for status in statuses])
        return
    table = Table(title="Backends")
    for col in ("backend", "available", "version", "devices / reason"):
        table.add_column(col)
    for status in statuses:
        table.add_row(status.name, "yes" if status.available else "[red]no[/]", status.version,
                      shown(", ".join(status.devices) if status.available else status.reason))
    console.print(table)
    for status in statuses:
        if status.available:
            plain = (" (the plain array-API step, compiled whole)" if status.compiles
                     else " (the plain array-API step)")
            fused = (" (and whole steps compiled, for the configs README's Backends lists)"
                     if status.compiles and status.kernels else "")
            console.print(f"{status.name} kernels: {', '.join(status.kernels) or 'none'}"
                          + (plain if not status.kernels else fused), soft_wrap=True)
        for name, why in status.dropped:
            console.print(f"[yellow]{status.name}: kernel {name} left out: {shown(why)}[/]",
                          soft_wrap=True)


# after evaluate, predict and backends above: `trainer --help` lists them in this order
app.command("bench")(bench_cmd)
app.command("sweep")(sweep_cmd)
runs_app.command("log")(runs_log_cmd)
app.add_typer(runs_app, name="runs")
app.command("serve")(serve_cmd)
app.command("export")(export_cmd)
app.add_typer(data_app, name="data")
tidy_help(app)


def main() -> None:
    app()


__all__ = ["app", "err_console", "main"]
