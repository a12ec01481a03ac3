"""What a sweep leaves behind: best.json, best-full.json, leaderboard.csv, history.svg,
importances.svg."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.fileio import atomic_write_json, atomic_write_text
from trainer.run.plots import render_svg, write_svg

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trainer.sweep.settings import SweepSettings

ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}


def retry_of(t: Any) -> int | None:
    """The trial this one re-runs: after a worker died (heartbeat) or a Ctrl-C."""
    history = t.system_attrs.get("retry_history")
    return history[-1] if history else t.user_attrs.get("retry_of")


def retried_numbers(trials: list[Any]) -> set[int]:
    return {n for n in map(retry_of, trials) if n is not None}


def params(t: Any) -> dict[str, Any]:
    """A trial's parameters; a waiting one has only those it was queued with."""
    return t.params or t.system_attrs.get("fixed_params", {})


def seconds(t: Any) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def reruns(trials: list[Any]) -> dict[int, int]:
    """Each re-run trial's number -> the number of the trial that re-runs it."""
    return {n: t.number for t in trials if (n := retry_of(t)) is not None}


def note(t: Any, retries: dict[int, int]) -> str:
    if t.number in retries:
        why = t.user_attrs.get("error") or "its worker stopped sending heartbeats"
        return f"{why}; re-run as trial {retries[t.number]}"
    parts = [t.user_attrs.get("error") or t.user_attrs.get("pruned") or ""]
    if t.user_attrs.get("baseline"):
        parts.insert(0, "the config as given")
    if retry_of(t) is not None:
        parts.append(f"re-run of trial {retry_of(t)}")
    return "; ".join(p for p in parts if p)


def leaderboard(trials: list[Any], names: list[str]) -> list[dict[str, Any]]:
    """Completed trials best first, then pruned, failed, running and waiting ones."""
    retried = reruns(trials)
    ranked = sorted(trials, key=lambda t: (ORDER.get(t.state.name, 5),
                                           -(t.value if t.value is not None else -math.inf),
                                           t.number))
    rows = []
    for rank, t in enumerate(ranked, 1):
        secs = seconds(t)
        rows.append({"rank": rank, "trial": t.number, "state": t.state.name,
                     "value": t.value, "best_epoch": t.user_attrs.get("best_epoch"),
                     "seconds": round(secs, 2) if secs is not None else None}
                    | {n: params(t).get(n) for n in names} | {"note": note(t, retried)})
    return rows


def write_outputs(study: Any, settings: SweepSettings, elapsed: float) -> dict[str, Any]:
    """Write the sweep directory's files and return the summary the CLI prints."""
    trials = study.get_trials(deepcopy=False)
    names = [p.path for p in settings.space.params]
    rows = leaderboard(trials, names)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["rank", "trial", "state", "value", "best_epoch",
                                             "seconds", *names, "note"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(settings.sweep_dir / "leaderboard.csv", buf.getvalue())
    counts = {state: sum(r["state"] == state for r in rows) for state in ORDER}
    done = [t for t in trials if t.state.name == "COMPLETE"]
    files, notes = ["leaderboard.csv"], []
    summary: dict[str, Any] = {"study": settings.study, "sweep_dir": str(settings.sweep_dir),
                               "trials": counts, "seconds": round(elapsed, 1)}
    base = next((t for t in done if t.user_attrs.get("baseline")), None)
    if base is not None:
        summary["baseline"] = {"trial": base.number, "value": base.value}
    if done:
        best = max(done, key=lambda t: (t.value, -t.number))
        write_best(settings, best)
        files += ["best.json", "best-full.json"]
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "run_dir": str(settings.sweep_dir / "trials" / str(best.number))}
        _optional(files, notes, "history.svg", lambda: write_svg(
            settings.sweep_dir / "history.svg",
            render_svg(_draw_history, trials, base.value if base else None, settings.study)))
    else:
        notes.append("no trial completed: no best.json or history.svg")
    try:
        imp = importances(study, done, names)
    except Exception as e:  # an optional part of the report never costs the sweep its summary
        imp = f"{type(e).__name__}: {e}"
    if isinstance(imp, str):
        notes.append(f"no importances.svg: {imp}")
    elif _optional(files, notes, "importances.svg", lambda: write_svg(
            settings.sweep_dir / "importances.svg",
            render_svg(_draw_importances, imp, _importance_title(settings.study, len(done))))):
        summary["importances"] = imp  # with fewer than TRUSTED_TRIALS: a caveat where shown
    return summary | {"files": files, "notes": notes}


def write_best(settings: SweepSettings, best: Any) -> None:
    """best.json: the best trial's config as the sweep trained it; best-full.json: its
    hyper-parameters with the base config's epochs and validation split (what to train next).
    Each says which it is in its first line, which `trainer train` prints first."""
    source = f"trial {best.number}"
    measured = settings.space.apply(settings.config, best.params, source=source)
    full = settings.space.apply(settings.full_config or settings.config, best.params,
                                source=source)

    def budget(c: Any) -> str:
        return f"{c.epochs} epochs, validation_split {c.validation_split:g}"

    atomic_write_json(settings.sweep_dir / "best.json", {
        "comment": f"the sweep's best trial ({best.number}, validation accuracy "
                   f"{best.value:.2%}) as the sweep trained it: {budget(measured)}; "
                   f"best-full.json trains it with {budget(full)}"} | measured.to_dict())
    atomic_write_json(settings.sweep_dir / "best-full.json", {
        "comment": f"the sweep's best trial ({best.number})'s hyper-parameters with the base "
                   f"config's {budget(full)}; best.json is the trial as the sweep trained it "
                   f"({budget(measured)})"} | full.to_dict())


def _optional(files: list[str], notes: list[str], name: str, write: Callable[[], None]) -> bool:
    """Write one optional file of the report; a failure becomes a note, not an exception."""
    try:
        write()
    except Exception as e:
        notes.append(f"could not write {name}: {type(e).__name__}: {e}")
        return False
    files.append(name)
    return True


# PED-ANOVA compares the parameter densities of the best trials with those of all of them; with
# fewer than two trials in that top group it cannot tell a parameter from noise.
TOP_QUANTILE = 0.1
MIN_TOP_TRIALS = 2
# below this many completed trials the importances are drawn with a caveat: a top group of 2
# out of 5 trials tells a parameter from chance poorly
TRUSTED_TRIALS = 10


def importances(study: Any, done: list[Any], names: list[str]) -> dict[str, float] | str:
    """PED-ANOVA importances of the parameters that varied (Optuna's default evaluator, which
    needs nothing beyond Optuna), or why there are none."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    varied = [n for n in names if len({repr(t.params.get(n)) for t in done}) > 1]
    if len(done) < 2 or not varied:
        return (f"it needs 2 completed trials in which a parameter varies "
                f"(completed: {len(done)})")
    if len({t.value for t in done}) < 2:
        return f"all {len(done)} completed trials scored the same ({done[0].value:.2%})"
    quantile = min(0.5, max(TOP_QUANTILE, MIN_TOP_TRIALS / len(done)))
    return get_param_importances(
        study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile), params=varied)


def _importance_title(study: str, done: int) -> str:
    return study if done >= TRUSTED_TRIALS else f"{study} (from {done} trials: too few to " \
        f"say much)"


def _draw_history(fig: Figure, trials: list[Any], baseline: float | None, title: str) -> None:
    fig.set_size_inches(8, 4)
    ax = fig.subplots()
    styles = {"COMPLETE": {"color": "C0", "marker": "o", "label": "trial"},
              "PRUNED": {"color": "0.6", "marker": "o", "label": "pruned (last value)",
                         "facecolors": "none"}}
    for state, style in styles.items():
        pts = [(t.number, 100 * t.value) for t in trials
               if t.state.name == state and t.value is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=18, gid=state.lower(), **style)
    done = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.number)
    best = list(np.maximum.accumulate([100 * t.value for t in done]))
    last = max(t.number for t in trials)  # the line runs on to the last trial
    ax.step([t.number for t in done] + [last], best + best[-1:], where="post", color="C1",
            label="best so far", gid="best")
    failed = [t.number for t in trials if t.state.name == "FAIL"]
    if failed:
        ax.scatter(failed, [ax.get_ylim()[0]] * len(failed), marker="x", color="C3",
                   label="failed", gid="failed", clip_on=False)
    if baseline is not None:
        ax.axhline(100 * baseline, color="0.4", linestyle="--", linewidth=1,
                   label="config as given")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"{title}: optimisation history")


def _draw_importances(fig: Figure, importances: dict[str, float], title: str) -> None:
    names = list(importances)[::-1]  # the most important at the top
    fig.set_size_inches(7, 1.2 + 0.45 * len(names))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="C0", gid="importances")
    for y, name in enumerate(names):
        ax.text(importances[name], y, f" {importances[name]:.2f}", va="center")
    ax.set_xlim(0, 1.1 * max(max(importances.values()), 1e-9))
    ax.set_xlabel("importance (PED-ANOVA: how unlike all trials' values the best trials' are)")
    ax.set_title(f"{title}: parameter importances")
