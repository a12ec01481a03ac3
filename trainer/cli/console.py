"""Console helpers for the CLI: the one place that turns errors into messages and exit codes."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from trainer.core.config import Config, default_config
from trainer.errors import TrainerError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def printable(value: Any, keep_newlines: bool = False) -> str:
    """A value read from a file (or a name on disk) as plain text: every unprintable character
    (an escape code's ESC, a carriage return, a zero-width space) written as its Python escape,
    `\\x1b`, so that it shows and never acts on the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (keep_newlines and c == "\n") else ascii(c)[1:-1]
                   for c in text)


def shown(value: Any, keep_newlines: bool = False) -> str:
    """The one way the CLI prints a value it did not write itself: printable, and rich's markup
    escaped (a `[red]` in a run's name is text)."""
    return escape(printable(value, keep_newlines))


def print_json(data: Any) -> None:
    """`--json` output: strict JSON (a NaN or an infinity is null, as no parser reads them),
    indented, on stdout; anything not JSON-native as its str."""
    sys.stdout.write(json.dumps(strict_json(data), indent=2, default=str, allow_nan=False)
                     + "\n")


def say_auto(name: str, why: str | None, as_json: bool = False) -> None:
    """One line: the backend --backend auto picked, and why (None: it was named, nothing to
    say); on stderr under --json, whose stdout is the JSON."""
    if why is not None:
        (err_console if as_json else console).print(
            f"--backend auto: {shown(name)} ({shown(why)})", soft_wrap=True)


def strict_json(value: Any) -> Any:
    """`value` with NumPy scalars as Python ones and non-finite floats as None."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a NumPy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_config(path: Path | None) -> Config:
    """The config file (None: the built-in default), with what reading it changed of its
    literal meaning said on stderr, one line each (stdout may be --json's)."""
    config = Config.from_file(path) if path is not None else default_config()
    for note in config.notes:
        err_console.print(f"[yellow]note:[/] {shown(note)}", soft_wrap=True)
    return config


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn project errors into one red line on stderr and their exit code; Ctrl-C into 130."""
    try:
        yield
    except TrainerError as e:
        err_console.print(f"[bold red]error:[/] {shown(e, keep_newlines=True)}", soft_wrap=True)
        raise typer.Exit(code=e.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.stderr.flush()
        raise typer.Exit(code=130) from None


@contextlib.contextmanager
def quiet_control_echo() -> Iterator[None]:
    """The terminal does not echo `^C` while the bars are live: echoed at the end of a full
    80-column bar it moves the cursor a line down, and the bars are then drawn twice."""
    try:
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError, AttributeError):  # not a terminal, or Windows
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHOCTL
    try:
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except termios.error:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, saved)
