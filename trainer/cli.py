"""The `trainer` command: thin wrappers over the Python API."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

import backends
from trainer.cli_bench import bench_cmd
from trainer.cli_data import data_app
from trainer.config import Config, default_config
from trainer.console import cli_errors, console, err_console
from trainer.data import load_dataset
from trainer.display import TrainProgress, held_out, print_report
from trainer.fileio import atomic_write_json
from trainer.images import load_digits
from trainer.inference import evaluate_model, load_run, predict_proba
from trainer.runs import check_run_name, claim_run_dir, run_metrics, write_run
from trainer.train import check_shapes, load_backend, train

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Train fully connected networks on MNIST-like data, on any array backend.")
app.add_typer(data_app, name="data")
app.command("bench")(bench_cmd)

Opt = typer.Option
BackendOpt = Annotated[str, Opt(help="numpy | array-api-strict | torch | cupy")]
DeviceOpt = Annotated[str | None, Opt(help="device of the backend, e.g. cuda:0")]
DataDirOpt = Annotated[Path | None, Opt(help="folder with the four IDX files")]
JsonOpt = Annotated[bool, Opt("--json", help="print a JSON summary instead of the report")]


def describe_network(config: Config) -> str:
    parts = [str(config.sizes[0])]
    for act, nodes in zip(config.activations, config.sizes[1:], strict=True):
        parts.append(f"{nodes} ({act})")
    return " -> ".join(parts)


def print_config(config: Config, name: str, backend: str, device: str) -> None:
    table = Table(title=f"Network configuration: {escape(name)}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("network", describe_network(config))
    for key, value in config.to_dict().items():
        if key != "layers":
            table.add_row(key, str(value))
    table.add_row("backend", f"{backend} ({device})")
    console.print(table)


@contextlib.contextmanager
def eval_bar(live: bool, label: str):
    """A progress bar over the evaluated samples; yields the `on_chunk(done, total)` callback."""
    with Progress(console=console, disable=not live, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command("train")
def train_cmd(
    config: Annotated[Path | None, typer.Argument(help="JSON config (default: built-in)")] = None,
    backend: BackendOpt = "numpy",
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    run_dir: Annotated[Path | None, Opt(help="run directory (default runs/<time>-<name>)")] = None,
    name: Annotated[str | None, Opt(help="run name (default: the config's file name)")] = None,
    seed: Annotated[int | None, Opt(min=0, help="override the config's seed")] = None,
    epochs: Annotated[int | None, Opt(min=1, help="override epochs")] = None,
    batch_size: Annotated[int | None, Opt(min=1, help="override batch_size")] = None,
    learning_rate: Annotated[float | None, Opt(help="override learning_rate")] = None,
    momentum: Annotated[float | None, Opt(help="override momentum")] = None,
    dtype: Annotated[str | None, Opt(help="float32 | float64")] = None,
    limit_train: Annotated[int | None, Opt(min=1, help="train on the first N images only")] = None,
    limit_test: Annotated[int | None, Opt(min=1, help="test on the first N images only")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="plain lines, no bars or tables")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a network, evaluate it on the test set and write a run directory."""
    with cli_errors():
        cfg = Config.from_file(config) if config else default_config()
        cfg = cfg.replace(seed=seed, epochs=epochs, batch_size=batch_size,
                          learning_rate=learning_rate, momentum=momentum, dtype=dtype)
        run_name = check_run_name(name or (config.stem if config else "default"))
        be = load_backend(backend, device)
        data = load_dataset(data_dir, quiet=quiet or as_json)
        check_shapes(cfg, data)
        live = not (quiet or as_json) and console.is_terminal
        if not (quiet or as_json):
            print_config(cfg, run_name, be.name, be.device_name)
        path = claim_run_dir(run_dir, run_name)
        atomic_write_json(path / "config.json", cfg.to_dict())
        samples = min(limit_train or len(data.train_labels), len(data.train_labels))
        show_lr = cfg.lr_schedule.type != "constant" or cfg.lr_schedule.warmup_epochs > 0
        with TrainProgress(console, cfg.epochs, samples, live=live, silent=as_json,
                           show_lr=show_lr) as progress:
            result = train(cfg, data, be, limit_train=limit_train, limit_test=limit_test,
                           on_epoch=progress.on_epoch, on_step=progress.on_step,
                           on_test_chunk=progress.on_test_chunk)
        classes = [str(c) for c in range(data.num_classes)]
        metrics = run_metrics(result, classes, be.version, data)
        write_run(path, result, classes, metrics, title=run_name)
        if as_json:
            print_json({"run_dir": str(path)} | metrics)
            return
        best = result.best()
        console.print(f"Final training accuracy: {result.train_accuracy:.2%}")
        if best is not None:
            kept = " (its weights kept)" if result.best_epoch else ""
            console.print(f"Best epoch: {best.epoch}, {held_out(best)}{kept}"
                          + ("; stopped early" if result.stopped_early else ""))
        console.print(f"Total training time: {result.total_seconds:.2f} s")
        if not quiet:
            console.print(f"Test evaluation ({len(result.test_predictions)} images):")
            print_report(console, result.test_report, classes)
        console.print(f"Test accuracy: {result.test_accuracy:.2%} "
                      f"({len(result.test_predictions)} images)")
        console.print(f"Run directory: {escape(str(path))}", soft_wrap=True)


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `trainer train`")],
    backend: BackendOpt = "numpy",
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    limit_test: Annotated[int | None, Opt(min=1, help="test on the first N images only "
                                          "(default: as many as the run was tested on)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Load a run's model and print its test report."""
    with cli_errors():
        model, metrics = load_run(run_dir)
        data = load_dataset(data_dir, quiet=as_json)
        limit = limit_test or metrics.get("test_samples")
        with eval_bar(not as_json and console.is_terminal, "evaluating") as on_chunk:
            rep, _ = evaluate_model(model, data, backend, device=device,
                                    limit_test=limit if isinstance(limit, int) else None,
                                    on_chunk=on_chunk)
        recorded = metrics.get("test_accuracy")
        if as_json:
            print_json({"run_dir": str(run_dir), "backend": backend, "recorded_test_accuracy":
                        recorded} | rep.to_dict(model.class_names))
            return
        console.print(f"Model: {describe_network(model.config)}  (run {escape(str(run_dir))})",
                      soft_wrap=True)
        print_report(console, rep, model.class_names)
        if isinstance(recorded, float):
            console.print(f"Recorded at training: {recorded:.2%}")


@app.command("predict")
def predict_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `trainer train`")],
    images: Annotated[list[Path], typer.Argument(help="PNG, JPEG or PGM images of digits")],
    backend: BackendOpt = "numpy",
    device: DeviceOpt = None,
    top: Annotated[int, Opt(min=1, help="how many classes to show per image")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Classify image files: the predicted class and the top probabilities of each."""
    with cli_errors():
        model, _ = load_run(run_dir)
        proba = predict_proba(model, load_digits(images), backend, device=device)
        names = model.class_names
        rows = []
        for path, p in zip(images, proba, strict=True):
            order = [int(i) for i in reversed(p.argsort())][:top]
            rows.append({"file": str(path), "prediction": names[order[0]],
                         "top": [{"class": names[i], "probability": float(p[i])} for i in order]})
        if as_json:
            print_json(rows)
            return
        table = Table(title="Predictions")
        for col in ("file", "prediction", f"top {top}"):
            table.add_column(col)
        for row in rows:
            shares = "  ".join(f"{t['class']} ({t['probability']:.1%})" for t in row["top"])
            table.add_row(escape(row["file"]), f"[bold]{row['prediction']}[/]", shares)
        console.print(table)


@app.command("backends")
def backends_cmd() -> None:
    """List the array backends, whether they load here, their versions and devices."""
    table = Table(title="Backends")
    for col in ("backend", "available", "version", "devices / reason"):
        table.add_column(col)
    for name in backends.NAMES:
        s = backends.status(name)
        table.add_row(name, "yes" if s.available else "[red]no[/]", s.version,
                      escape(", ".join(s.devices) if s.available else s.reason))
    console.print(table)


def main() -> None:
    app()


__all__ = ["app", "err_console", "main"]
