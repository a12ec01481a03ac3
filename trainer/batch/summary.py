"""A group's summary: per config, the test accuracy's mean, std, min and max over its seeds,
and the time; written as summary.json, summary.csv and history.svg (every run's history)."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from trainer.core.config import Config
from trainer.errors import TrainerError, UsageError
from trainer.fileio import atomic_write_json, atomic_write_text
from trainer.run.catalog import RunInfo, is_run_dir, network_name, read_run
from trainer.run.plots import overlay_svg, write_svg

from .plan import Batch, Member, read_manifest

CSV_FIELDS = ("config", "network", "epochs", "runs", "finished", "diverged", "mean", "std", "min",
              "max", "mean_seconds", "total_seconds")


def summarise(batch: Batch, group: Path) -> tuple[dict[str, Any], dict[str, list[RunInfo]]]:
    """The summary of the group's runs (read back from their directories), and the runs by
    config. The std is the sample standard deviation (n - 1), None for a single run."""
    runs: dict[str, list[RunInfo]] = {name: [] for name in batch.configs}
    members: dict[str, list[Member]] = {name: [] for name in batch.configs}
    for member in batch.members():
        members[member.config_name].append(member)
        path = group / member.dirname
        if is_run_dir(path):  # not one killed before it wrote its config: it never started
            runs[member.config_name].append(read_run(path))
    rows = [_config_row(name, batch, members[name], runs[name]) for name in batch.configs]
    summary = {"group": str(group), "name": batch.name, "seeds": batch.seeds,
               "limit_train": batch.limit_train, "limit_test": batch.limit_test,
               "backend": batch.backend, "configs": rows,
               "complete": all(r["finished"] + r["diverged"] == r["runs"] for r in rows)}
    return summary, runs


def _config_row(name: str, batch: Batch, members: list[Member],
                runs: list[RunInfo]) -> dict[str, Any]:
    cfg = batch.configs[name]
    done = [r for r in runs if r.state == "finished" and r.test_accuracy is not None]
    accuracy = [r.test_accuracy for r in done if r.test_accuracy is not None]
    seconds = [r.seconds for r in done if r.seconds is not None]
    return {
        "config": name, "network": network_name(cfg.to_dict()), "epochs": cfg.epochs,
        "runs": len(members), "finished": len(done),
        "diverged": sum(r.state == "diverged" for r in runs),
        "test_accuracy": {
            "mean": statistics.fmean(accuracy) if accuracy else None,
            "std": statistics.stdev(accuracy) if len(accuracy) > 1 else None,
            "min": min(accuracy, default=None), "max": max(accuracy, default=None)},
        "seconds": {"mean": statistics.fmean(seconds) if seconds else None,
                    "total": sum(seconds)},
        "members": [{"seed": r.config.get("seed"), "run_dir": str(r.path), "state": r.state,
                     "test_accuracy": r.test_accuracy, "seconds": r.seconds,
                     "epochs": r.epochs_done} for r in runs],
    }


def write_summary(group: Path, summary: dict[str, Any], runs: dict[str, list[RunInfo]]) -> None:
    """summary.json, summary.csv (one row per config) and history.svg, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in summary["configs"]:
        acc, secs = row["test_accuracy"], row["seconds"]
        writer.writerow({k: row[k] for k in CSV_FIELDS[:6]} | {
            "mean": acc["mean"], "std": acc["std"], "min": acc["min"], "max": acc["max"],
            "mean_seconds": secs["mean"], "total_seconds": secs["total"]})
    histories = {name: [r.history for r in infos if r.history] for name, infos in runs.items()}
    write_svg(group / "history.svg", overlay_svg(
        {name: h for name, h in histories.items() if h}, title=summary["name"]))
    atomic_write_text(group / "summary.csv", buf.getvalue())
    atomic_write_json(group / "summary.json", summary)


def read_group(group: Path) -> tuple[dict[str, Any], dict[str, list[RunInfo]], float]:
    """A group directory read back: its summary as of now (its runs as they are), the runs by
    config, and when it was made. UsageError naming group.json if that is damaged."""
    manifest = read_manifest(group)
    try:
        configs = {str(name): Config.from_dict(cfg, source=f"{group}/group.json")
                   for name, cfg in manifest["configs"].items()}
        seeds = manifest["seeds"]
        if seeds is not None and not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise UsageError(f"{group}/group.json: seeds must be integers >= 0")
        batch = Batch(configs, seeds, manifest.get("limit_train"), manifest.get("limit_test"),
                      str(manifest.get("backend")), str(manifest.get("name")))
        created = float(manifest.get("created", 0))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise UsageError(f"{group}/group.json: damaged ({type(e).__name__}: {e})") from None
    except TrainerError as e:
        raise UsageError(str(e)) from None
    summary, runs = summarise(batch, group)
    return summary, runs, created


def markdown(summary: dict[str, Any]) -> str:
    """One row per config: mean ± std (points), min and max of the test accuracy, time."""
    rows = ["| config | network | epochs | runs | test accuracy, mean ± std | min | max | "
            "s/run |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary["configs"]:
        acc, seconds = row["test_accuracy"], row["seconds"]["mean"]
        std = "" if acc["std"] is None else f" ± {100 * acc['std']:.2f}"
        rows.append(f"| {row['config']} | {row['network']} | {row['epochs']} | "
                    f"{row['finished']}/{row['runs']} | {_pct(acc['mean'])}{std} | "
                    f"{_pct(acc['min'])} | {_pct(acc['max'])} | "
                    f"{'-' if seconds is None else f'{seconds:.0f}'} |")
    return "\n".join(rows)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"
