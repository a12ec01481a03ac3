"""The `trainer` command: thin wrappers over the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

import backends
from trainer.cli_data import data_app
from trainer.config import Config, default_config
from trainer.console import cli_errors, console, err_console
from trainer.data import load_dataset
from trainer.fileio import atomic_write_json
from trainer.runs import claim_run_dir, library_versions, write_run
from trainer.train import EpochStats, check_shapes, load_backend, train

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Train fully connected networks on MNIST-like data, on any array backend.")
app.add_typer(data_app, name="data")

Opt = typer.Option


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


@app.command("train")
def train_cmd(
    config: Annotated[Path | None, typer.Argument(help="JSON config (default: built-in)")] = None,
    backend: Annotated[str, Opt(help="numpy | array-api-strict | torch | cupy")] = "numpy",
    device: Annotated[str | None, Opt(help="device of the backend, e.g. cuda:0")] = None,
    data_dir: Annotated[Path | None, Opt(help="directory with the four IDX files")] = None,
    run_dir: Annotated[Path | None, Opt(help="run directory (default runs/<time>-<name>)")] = None,
    seed: Annotated[int | None, Opt(min=0, help="override the config's seed")] = None,
    epochs: Annotated[int | None, Opt(min=1, help="override epochs")] = None,
    batch_size: Annotated[int | None, Opt(min=1, help="override batch_size")] = None,
    learning_rate: Annotated[float | None, Opt(help="override learning_rate")] = None,
    momentum: Annotated[float | None, Opt(help="override momentum")] = None,
    dtype: Annotated[str | None, Opt(help="float32 | float64")] = None,
    limit_train: Annotated[int | None, Opt(min=1, help="train on the first N images only")] = None,
    limit_test: Annotated[int | None, Opt(min=1, help="test on the first N images only")] = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="only the final figures")] = False,
) -> None:
    """Train a network, evaluate it on the test set and write a run directory."""
    with cli_errors():
        cfg = Config.from_file(config) if config else default_config()
        cfg = cfg.replace(seed=seed, epochs=epochs, batch_size=batch_size,
                          learning_rate=learning_rate, momentum=momentum, dtype=dtype)
        name = config.stem if config else "default"
        be = load_backend(backend, device)
        data = load_dataset(data_dir, quiet=quiet)
        check_shapes(cfg, data)
        if not quiet:
            print_config(cfg, name, be.name, be.device_name)
        path = claim_run_dir(run_dir, name)
        atomic_write_json(path / "config.json", cfg.to_dict())

        def show(s: EpochStats) -> None:
            if not quiet:
                console.print(f"epoch {s.epoch:>3}/{cfg.epochs}  loss {s.loss:.4f}  "
                              f"train accuracy {s.train_accuracy:7.2%}  {s.seconds:6.2f} s")

        result = train(cfg, data, be, limit_train=limit_train, limit_test=limit_test,
                       on_epoch=show)
        classes = [str(c) for c in range(data.num_classes)]
        write_run(path, result, classes, {"versions": library_versions(be.version, be.name),
                                          "data": str(data.path)})
        console.print(f"Final training accuracy: {result.train_accuracy:.2%}")
        console.print(f"Total training time: {result.total_seconds:.2f} s")
        console.print(f"Test accuracy: {result.test_accuracy:.2%} "
                      f"({len(result.test_labels)} images)")
        console.print(f"Run directory: {escape(str(path))}", soft_wrap=True)


@app.command("backends")
def backends_cmd() -> None:
    """List the array backends, whether they load here, their versions and devices."""
    table = Table(title="Backends")
    for col in ("backend", "available", "version", "devices / reason"):
        table.add_column(col)
    for name in backends.NAMES:
        s = backends.status(name)
        table.add_row(name, "yes" if s.available else "[red]no[/]", s.version,
                      ", ".join(s.devices) if s.available else s.reason)
    console.print(table)


def main() -> None:
    app()


__all__ = ["app", "err_console", "main"]
