"""`trainer runs [DIR]`: the table of runs and groups; `trainer runs compare RUN RUN...`."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from typer.core import TyperGroup

from trainer.batch import is_group
from trainer.batch.summary import read_group
from trainer.cli.console import cli_errors, console, print_json, printable, shown
from trainer.cli.options import Opt
from trainer.errors import TrainerError, UsageError
from trainer.fileio import new_folder
from trainer.run.catalog import (
    STAMP,
    RunInfo,
    find_runs,
    is_run_dir,
    read_run,
    resolve_run,
    run_id,
)
from trainer.run.compare import config_differences, metric_rows, per_class_f1
from trainer.run.plots import overlay_svg, write_svg

SORT_KEYS = ("date", "name", "network", "backend", "epochs", "test", "time", "state")


class _ListByDefault(TyperGroup):
    """`trainer runs [DIR]` is `trainer runs list [DIR]`: a first word that names no
    subcommand is the list's."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: a click.Context
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["list", *args]
        return super().parse_args(ctx, args)


runs_app = typer.Typer(cls=_ListByDefault, help="The runs and groups under runs/ (`trainer "
                       "runs [DIR]`), and `trainer runs compare RUN RUN...`.")


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime("%m-%d %H:%M")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 100 else f"{seconds / 60:.0f}m" if seconds < 6000 \
        else f"{seconds / 3600:.1f}h"


def _run_row(info: RunInfo) -> dict[str, Any]:
    return info.row() | {"kind": "run"}


def _group_entry(group: Path) -> dict[str, Any]:
    """A group: its own row (its state is its runs' worst) and one row per config, with the
    mean test accuracy and mean time a run over its seeds."""
    name = STAMP.sub("", group.name, count=1) + "/"
    try:
        summary, runs, created = read_group(group)
    except TrainerError as e:  # one damaged group does not hide the others
        return {"kind": "group", "path": str(group), "name": name, "started":
                group.stat().st_mtime, "network": "", "backend": None, "epochs": None,
                "test_accuracy": None, "seconds": None, "state": "damaged", "problem": str(e),
                "configs": []}
    rows = []
    for row in summary["configs"]:
        states = [r.state for r in runs[row["config"]]] + \
            ["interrupted"] * (row["runs"] - len(runs[row["config"]]))  # never started
        rows.append({"kind": "config", "group": str(group), "name": row["config"],
                     "started": created, "network": row["network"],
                     "backend": summary["backend"], "epochs": row["epochs"],
                     "test_accuracy": row["test_accuracy"]["mean"],
                     "test_std": row["test_accuracy"]["std"], "seconds": row["seconds"]["mean"],
                     "total_seconds": row["seconds"]["total"],
                     "state": _worst(states), "runs": row["runs"], "finished": row["finished"]})
    tested = [r["test_accuracy"] for r in rows if r["test_accuracy"] is not None]
    return {"kind": "group", "path": str(group), "name": name, "started": created,
            "network": "", "backend": summary["backend"],
            "epochs": max((r["epochs"] for r in rows), default=None),
            "test_accuracy": max(tested, default=None),
            "seconds": sum(r["total_seconds"] for r in rows),  # all its finished runs
            "state": _worst([r["state"] for r in rows]), "configs": rows}


def _worst(states: list[str]) -> str:
    return next((s for s in ("running", "damaged", "interrupted", "diverged") if s in states),
                "finished")


def collect(root: Path) -> list[dict[str, Any]]:
    """The entries of `trainer runs root`: its runs, and its groups (each with a row per
    config); a group given as root: its runs."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder of runs: "
                         f"{'it does not exist' if not root.exists() else 'it is a file'}")
    if is_run_dir(root):
        return [_run_row(read_run(root))]
    entries = [_run_row(info) for info in find_runs(root)]
    if not is_group(root):
        entries += [_group_entry(p) for p in sorted(root.iterdir()) if p.is_dir() and
                    is_group(p)]
    return entries


def _sort_key(key: str) -> Any:
    def number(value: Any, default: float) -> float:
        return default if value is None else value
    return {
        "date": lambda r: (r["started"], r["name"]),
        "name": lambda r: r["name"],
        "network": lambda r: (r["network"], r["name"]),
        "backend": lambda r: (r["backend"] or "", r["name"]),
        "epochs": lambda r: (number(r["epochs"], -1), r["name"]),
        "test": lambda r: (-number(r["test_accuracy"], -1), r["name"]),  # best first
        "time": lambda r: (number(r["seconds"], -1), r["name"]),
        "state": lambda r: (r["state"], r["name"]),
    }[key]


def sort_entries(entries: list[dict[str, Any]], key: str, reverse: bool) -> list[dict[str, Any]]:
    """Runs and groups by `key`, and each group's configs by it too."""
    if key not in SORT_KEYS:
        raise UsageError(f"unknown sort key {key!r}; choose one of {', '.join(SORT_KEYS)}")
    for entry in entries:
        if entry["kind"] == "group":
            entry["configs"] = sorted(entry["configs"], key=_sort_key(key), reverse=reverse)
    return sorted(entries, key=_sort_key(key), reverse=reverse)


@runs_app.command("list")
def list_cmd(
    directory: Annotated[Path | None, typer.Argument(
        metavar="[DIR]", help="a folder of runs and groups, or a group (default: runs)")] = None,
    sort: Annotated[str, Opt(help=f"sort by {', '.join(SORT_KEYS)} (test: best first)")] = "date",
    reverse: Annotated[bool, Opt("--reverse", help="the other way round")] = False,
    as_json: Annotated[bool, Opt("--json", help="print JSON instead")] = False,
) -> None:
    """The runs and groups under DIR (a group: a row per config, the mean over its seeds):
    date, name, network, backend, epochs, test accuracy, time, state. The default command."""
    with cli_errors():
        if directory is None and not Path("runs").exists():  # nothing trained here yet
            entries, directory = sort_entries([], sort, reverse), Path("runs")
        else:
            directory = directory or Path("runs")
            entries = sort_entries(collect(directory), sort, reverse)
        if as_json:
            print_json(entries)
        elif not entries:
            console.print(f"No runs in {shown(str(directory))}", soft_wrap=True)
        else:
            console.print(runs_table(entries, console.width))


STATE_COLORS = {"finished": "green", "running": "cyan", "interrupted": "yellow"}


COLUMNS = ("id", "date", "name", "network", "backend", "epochs", "test %", "time", "state")
# on a console narrower than 90 columns these go first, in this order, leaving room for names
DROPPED_WHEN_NARROW = ("backend", "date", "time", "network")
DROPPED_BELOW = (90, 66, 58, 48)


def runs_table(entries: list[dict[str, Any]], width: int = 80) -> Table:
    """The table, fitting `width` columns: at 90 every column, narrower fewer (at 80 all
    but the backend)."""
    columns = list(COLUMNS)
    for column, below in zip(DROPPED_WHEN_NARROW, DROPPED_BELOW, strict=True):
        if width < below:
            columns.remove(column)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=0)
    for column in columns:
        table.add_column(column, overflow="fold" if column == "name" else "ellipsis",
                         no_wrap=column != "name",
                         justify="right" if column in ("epochs", "test %", "time") else "left")
    for entry in entries:
        _add_row(table, columns, entry, _when(entry["started"]))
        for row in entry.get("configs", []):
            _add_row(table, columns, row, "")
    return table


def _add_row(table: Table, columns: list[str], r: dict[str, Any], date: str) -> None:
    name = f"  {r['name']} x{r['runs']}" if r["kind"] == "config" else r["name"]
    done, epochs = r.get("epochs_done"), r["epochs"]
    epochs_text = "-" if epochs is None else str(epochs) if done in (None, epochs) else \
        f"{done}/{epochs}"
    test = "-" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.2f}"
    state = r["state"]
    cells = {"id": run_id(r["path"]) if r["kind"] == "run" else "", "date": date,
             "name": shown(name), "network": shown(r["network"]),
             "backend": shown(r["backend"] or "-"), "epochs": epochs_text, "test %": test,
             "time": _duration(r["seconds"]),
             "state": f"[{STATE_COLORS.get(state, 'red')}]{shown(state)}[/]"}
    table.add_row(*[cells[c] for c in columns])


@runs_app.command("compare")
def compare_cmd(
    refs: Annotated[list[str], typer.Argument(
        metavar="RUN RUN...", help="two or more runs: directories, ids from `trainer runs`, "
                                   "or latest")],
    out: Annotated[Path | None, Opt(help="where to write the SVG of their histories "
                                    "(default: compare.svg in a new folder "
                                    "compare/<time>/ beside the runs)")] = None,
    as_json: Annotated[bool, Opt("--json", help="print JSON instead")] = False,
) -> None:
    """The runs side by side: the config keys that differ, their metrics, per-class F1, and
    one SVG overlaying their histories. Each run is headed by its directory."""
    with cli_errors():
        if len(refs) < 2:
            raise UsageError("compare needs at least two runs")
        runs = [read_run(resolve_run(ref)) for ref in refs]
        damaged = [r for r in runs if r.state == "damaged"]
        if damaged:
            raise UsageError(f"{damaged[0].path}: {damaged[0].problem}")
        labels = run_labels([r.path for r in runs])
        if out is None:
            out = new_folder(Path(os.path.commonpath([r.path.resolve().parent for r in runs]))
                             / "compare") / "compare.svg"
        write_svg(out, overlay_svg({label: [r.history] for label, r in
                                    zip(_printable_labels(labels), runs, strict=True)},
                                   title="compare"))
        differ, metrics, f1 = (config_differences(runs), metric_rows(runs),
                               per_class_f1(runs))
        if as_json:
            print_json({"runs": [str(r.path) for r in runs], "labels": labels,
                        "config_differences": differ, "metrics": metrics, "per_class_f1": f1,
                        "svg": str(out)})
            return
        for title, rows, fmt in (("Config keys that differ", differ, _plain),
                                 ("Metrics", metrics, _metric), ("Per-class F1", f1, _pct)):
            console.print(_side_by_side(title, labels, rows, fmt))
        console.print(f"Histories overlaid: {shown(str(out))}", soft_wrap=True)


def run_labels(paths: list[Path]) -> list[str]:
    """Each run's directory: its folder's name, with as many parent folders as it takes to
    tell it from the others (the same run given twice is labelled #1, #2)."""
    parts = [p.resolve().parts for p in paths]
    labels = []
    for these in parts:
        depth = 1
        while depth < len(these) and any(other[-depth:] == these[-depth:] and other != these
                                         for other in parts):
            depth += 1
        labels.append("/".join(these[-depth:]))
    return [f"{label} #{labels[:i].count(label) + 1}" if labels.count(label) > 1 else label
            for i, label in enumerate(labels)]


def _printable_labels(labels: list[str]) -> list[str]:
    """The labels as the SVG shows them: printable, and still one per run (two labels that
    differ only in unprintable characters get a number)."""
    shown_labels = [printable(label) for label in labels]
    return [f"{label} #{i + 1}" if shown_labels.count(label) > 1 else label
            for i, label in enumerate(shown_labels)]


def _plain(_key: str, value: Any) -> str:
    return "(absent)" if value is None else str(value)


def _pct(_key: str, value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _metric(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if "accuracy" in key or "f1" in key:
        return f"{100 * value:.2f}%"
    return _duration(value) if key == "seconds" else str(value)


def _side_by_side(title: str, labels: list[str], rows: list[tuple[str, list[Any]]],
                  fmt: Any) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("", overflow="fold")
    for label in labels:
        table.add_column(shown(label), justify="right", overflow="fold")
    if not rows:
        table.add_row("(none)", *["" for _ in labels])
    for key, values in rows:
        table.add_row(shown(key), *[shown(fmt(key, v)) for v in values])
    return table
