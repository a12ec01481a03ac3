"""`--help` that reads at 80 columns: sentences wrapped by the terminal, flags without a type."""

from __future__ import annotations

import inspect

import typer
from typer.core import TyperOption

_display_type = TyperOption.display_type_rich


def _flag_shows_no_type(self: TyperOption, ctx: object) -> str | None:
    """Typer 0.2x writes `--json <bool>` for a flag that takes no value: show nothing."""
    if self.is_flag and not self.count:
        return None
    return _display_type(self, ctx)  # type: ignore[arg-type]


def one_paragraph_lines(text: str) -> str:
    """Each paragraph on one line: typer's rich help keeps a docstring's single newlines, which
    break sentences mid-way once the terminal wraps them again."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


def tidy_help(app: typer.Typer) -> None:
    """Tidy the help of every command and group of `app` (call once all are registered)."""
    TyperOption.display_type_rich = _flag_shows_no_type  # type: ignore[method-assign]
    for info in app.registered_commands:
        if info.callback is not None and info.callback.__doc__:
            info.callback.__doc__ = one_paragraph_lines(info.callback.__doc__)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            tidy_help(group.typer_instance)
            help_text = group.typer_instance.info.help
            if isinstance(help_text, str):
                group.typer_instance.info.help = one_paragraph_lines(help_text)
