"""`trainer predict`: classify image files, and show the 28x28 the network saw of each."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image
from rich.table import Table

from trainer.cli.console import cli_errors, console, err_console, print_json, shown
from trainer.cli.options import BackendOpt, DeviceOpt, Opt, RunArg
from trainer.data.images import image_files, load_digit, stack_digits
from trainer.errors import DataError, UsageError
from trainer.fileio import atomic_write_bytes
from trainer.run.catalog import resolve_run
from trainer.run.inference import load_run, predict_proba
from trainer.run.train import load_backend

SHADES = " ░▒▓█"  # a pixel's gray level, darkest first, as two characters of the terminal


def predict_cmd(
    run: RunArg,
    images: Annotated[list[Path], typer.Argument(help="images of digits (PNG, JPEG, PGM, TIFF, "
                                                      "...), or folders of them")],
    backend: BackendOpt = "numpy",
    device: DeviceOpt = None,
    top: Annotated[int, Opt(min=1, help="how many classes to show per image")] = 3,
    show: Annotated[bool, Opt("--show", help="print the 28x28 image the network saw of each "
                                             "file, in block characters")] = False,
    save_inputs: Annotated[Path | None, Opt(metavar="DIR", help="save the 28x28 image the "
                                            "network saw of each file as a PNG in DIR")] = None,
    as_json: Annotated[bool, Opt("--json", help="print JSON instead")] = False,
) -> None:
    """Classify image files: the predicted class and the top probabilities of each, with a
    warning where the prepared image is unlike the training data. A file that cannot be read
    is reported on its own line, the others classified, and the exit code is 2."""
    with cli_errors():
        if save_inputs is not None and save_inputs.exists() and not save_inputs.is_dir():
            raise UsageError(f"--save-inputs {save_inputs} is a file; name a folder")
        model, _ = load_run(resolve_run(run))
        digits, read, notes, failed = [], [], [], []
        for path in image_files(images):
            try:
                found: list[str] = []
                digits.append(load_digit(path, notes=found))
                read.append(path)
                notes.append(found)
            except DataError as e:
                failed.append((path, str(e)))
        proba = predict_proba(model, stack_digits(digits), load_backend(backend, device))
        names = model.class_names
        rows: list[dict[str, Any]] = []
        for path, p, warned in zip(read, proba, notes, strict=True):
            order = [int(i) for i in reversed(p.argsort())][:top]
            rows.append({"file": str(path), "prediction": names[order[0]],
                         "top": [{"class": names[i], "probability": float(p[i])} for i in order],
                         "warnings": warned})
        if save_inputs is not None:
            for row, png in zip(rows, save_inputs_as_png(save_inputs, read, digits),
                                strict=True):
                row["input"] = str(png)
        for _, message in failed:  # each message names its file
            err_console.print(f"[bold red]error:[/] {shown(message)}", soft_wrap=True)
        for row in rows:
            for message in row["warnings"]:
                err_console.print(f"[yellow]warning:[/] {shown(message)}")
        if as_json:
            print_json(rows + [{"file": str(path), "error": message} for path, message in failed])
        else:
            if show:
                for row, digit in zip(rows, digits, strict=True):
                    console.print(f"{shown(row['file'])}: {shown(row['prediction'])}",
                                  soft_wrap=True, highlight=False)
                    console.print(blocks(digit), highlight=False)
            if rows:
                _print_predictions(rows, top)
        if failed:
            raise typer.Exit(code=2)


def blocks(digit: np.ndarray) -> str:
    """The image in block characters, two per pixel (a terminal's cell is about twice as tall
    as wide), in a frame: white ink is █, the black background blank."""
    levels = np.minimum(digit.astype(np.int64) * len(SHADES) // 256, len(SHADES) - 1)
    width = 2 * digit.shape[1]
    lines = ["┌" + "─" * width + "┐"]
    lines += ["│" + "".join(SHADES[v] * 2 for v in row) + "│" for row in levels]
    return "\n".join([*lines, "└" + "─" * width + "┘"])


def save_inputs_as_png(folder: Path, paths: list[Path], digits: list[np.ndarray]) -> list[Path]:
    """Each prepared digit as `folder/<file's stem>.png` (-2, -3, ... where stems repeat)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --save-inputs {folder}: {e.strerror or e}") from None
    written: list[Path] = []
    for path, digit in zip(paths, digits, strict=True):
        out, n = folder / f"{path.stem}.png", 1
        while out in written:
            n += 1
            out = folder / f"{path.stem}-{n}.png"
        buf = io.BytesIO()
        Image.fromarray(digit).save(buf, format="PNG")
        atomic_write_bytes(out, buf.getvalue())
        written.append(out)
    return written


def _print_predictions(rows: list[dict[str, Any]], top: int) -> None:
    table = Table(title="Predictions")
    for col in ("file", "prediction", f"top {top}"):
        table.add_column(col)
    for row in rows:  # class names come from the model file: plain text, never markup
        shares = "  ".join(f"{shown(t['class'])} ({t['probability']:.1%})" for t in row["top"])
        table.add_row(shown(row["file"]), f"[bold]{shown(row['prediction'])}[/]", shares)
    console.print(table)
