"""`trainer sweep`: a hyper-parameter search over a space file, with a live table of trials."""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.live import Live
from rich.table import Table

from trainer.cli.cluster import (
    ClusterOpt,
    ShipDataOpt,
    TlsCaOpt,
    TlsCertOpt,
    TlsKeyOpt,
    cluster_option,
)
from trainer.cli.console import (
    cli_errors,
    console,
    err_console,
    load_config,
    print_json,
    say_auto,
    shown,
)
from trainer.cli.display import load_data
from trainer.cli.options import (
    BatchSizeOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    DtypeOpt,
    EpochsOpt,
    LearningRateOpt,
    MomentumOpt,
    Opt,
    TrainBackendOpt,
)
from trainer.cli.track import LogOpt, targets, tracking
from trainer.data.datasets import get_spec
from trainer.run.auto import resolve_backend
from trainer.run.rundir import check_run_name
from trainer.sweep.cluster import cluster_executor
from trainer.sweep.report import TRUSTED_TRIALS, note, reruns, seconds
from trainer.sweep.run import SAMPLERS, SweepSettings, load_space, run_sweep
from trainer.sweep.settings import HEARTBEAT_SECONDS
from trainer.track import SweepLog

ROWS = 30  # the live table shows the last this many trials


class TrialTable:
    """The trials as a rich table redrawn live, or one plain line per finished trial."""

    def __init__(self, names: list[str], epochs: int, live: bool, silent: bool) -> None:
        self.names, self.epochs, self.silent = names, epochs, silent
        self.trials: list[Any] = []
        self.printed: set[int] = set()
        self.next = 0.0
        self.live = Live(self, console=console, refresh_per_second=2, transient=False) \
            if live and not silent else None

    def __enter__(self) -> TrialTable:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, study: Any, force: bool = False) -> None:
        """Re-read the study (at most twice a second, unless forced) and show it."""
        now = time.monotonic()
        if self.silent or (now < self.next and not force):
            return
        self.next = now + 0.5  # each refresh reads the study from its database
        self.trials = study.get_trials(deepcopy=False)
        if self.live is None:
            self._print_finished()

    def _print_finished(self) -> None:
        best, retried = None, reruns(self.trials)
        for t in sorted(self.trials, key=lambda t: t.number):
            if t.state.name == "COMPLETE" and (best is None or t.value > best.value):
                best = t
            if t.number in self.printed or t.state.name in ("RUNNING", "WAITING"):
                continue
            self.printed.add(t.number)
            value = f"{t.value:.2%}" if t.value is not None else "-"
            params = "  ".join(f"{n}={_fmt(t.params.get(n))}" for n in self.names)
            line = f"trial {t.number:>3} {t.state.name:<8} val acc {value:>7}  {params}"
            if best is not None:
                line += f"  (best {best.value:.2%}, trial {best.number})"
            why = note(t, retried)
            console.print(shown(line + (f"  {why}" if why else "")), soft_wrap=True)

    def __rich__(self) -> Table:
        # figures never break: the parameters' names do (after _ or .) when the table is
        # wider than the terminal, and the note wraps between its words
        fixed = ("#", "state", "val acc", "epoch", "secs")
        split = sum(len(c) + 1 for c in (*fixed, *self.names)) + 20 > console.width
        table = Table(title="Trials", title_justify="left", box=box.SIMPLE_HEAD,
                      show_edge=False, pad_edge=False, padding=0)
        for col in (*fixed, *self.names):
            table.add_column(_breakable(col) if split else col, no_wrap=True,
                             justify="left" if col == "state" else "right")
        table.add_column("note", overflow="fold", min_width=8)
        done = [t for t in self.trials if t.state.name == "COMPLETE"]
        best = max(done, key=lambda t: t.value).number if done else None
        retried = reruns(self.trials)
        for t in sorted(self.trials, key=lambda t: t.number)[-ROWS:]:
            value = t.value if t.value is not None else (
                max(t.intermediate_values.values()) if t.intermediate_values else None)
            secs = seconds(t)
            if secs is None and t.datetime_start is not None:  # running: so far
                secs = (datetime.now() - t.datetime_start).total_seconds()
            style = {"FAIL": "red", "PRUNED": "dim", "RUNNING": "cyan"}.get(t.state.name, "")
            table.add_row(
                f"{t.number}{' *' if t.number == best else ''}", t.state.name,
                f"{value:.2%}" if value is not None else "",
                f"{len(t.intermediate_values)}/{self.epochs}",
                f"{secs:.1f}" if secs is not None else "",
                *[shown(_fmt(t.params.get(n))) for n in self.names], shown(note(t, retried)),
                style="bold green" if t.number == best else style)
        return table


def _breakable(name: str) -> str:
    """A parameter's name on a line per part: `learning_` / `rate`, `layers[1].` / `nodes`."""
    return re.sub(r"(?<=[_.])(?=.)", "\n", name)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def print_summary(summary: dict[str, Any]) -> None:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in summary["trials"].items() if n)
    console.print(f"Study {shown(summary['study'])}: {counts} "
                  f"({summary['seconds']:.0f} s this run)")
    base = summary.get("baseline")
    if base is not None:
        console.print(f"The config as given (trial {base['trial']}): validation accuracy "
                      f"{base['value']:.2%}")
    best = summary.get("best")
    if best is not None:
        gain = f" ({100 * (best['value'] - base['value']):+.2f} points)" if base else ""
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        # wrapped by rich between words (soft_wrap would leave it to the terminal: mid-word)
        console.print(f"Best: trial {best['trial']}, validation accuracy "
                      f"{best['value']:.2%}{gain}: {shown(params)}")
        if "importances" in summary:
            imp = ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items())
            done = summary["trials"].get("COMPLETE", 0)
            caveat = f" (from {done} trials: too few to say much)" if done < TRUSTED_TRIALS \
                else ""
            console.print(f"Importances{caveat}: {shown(imp)}")
        where = shown(summary["sweep_dir"])
        console.print(f"Best config: {where}/best.json as the sweep trained it; "
                      f"{where}/best-full.json with the base config's epochs and validation "
                      f"split (train it with `trainer train {where}/best-full.json`)")
    for n in summary["notes"]:
        console.print(f"[yellow]note:[/] {shown(n)}", soft_wrap=True)
    console.print(f"Sweep directory: {shown(summary['sweep_dir'])} "
                  f"({', '.join(summary['files'])}, trials/)")


def sweep_cmd(
    config: Annotated[Path, typer.Argument(help="the JSON config to start from")],
    space: Annotated[Path, Opt(help="JSON file: config key -> {uniform|log_uniform|int|choice}")],
    trials: Annotated[int, Opt(min=1, help="run until the study holds N finished trials")],
    sampler: Annotated[str, Opt(help=" | ".join(SAMPLERS))] = "tpe",
    storage: Annotated[str | None, Opt(help="SQLAlchemy URL shared by workers, e.g. "
                                       "postgresql+psycopg2://user:pw@host/db (default: "
                                       "SQLite in the sweep directory)")] = None,
    study: Annotated[str | None, Opt(help="study name (default: the config's file name)")] = None,
    sweep_dir: Annotated[Path | None, Opt(help="default sweeps/<study>")] = None,
    workers: Annotated[int, Opt(min=1, help="local worker processes (BLAS threads split "
                                "between them)")] = 1,
    backend: TrainBackendOpt = "numpy",
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    dataset: DatasetOpt = None,
    validation_split: Annotated[float | None, Opt(min=0, help="share or count of training "
                                                  "images scored (default: the config's, "
                                                  "else 0.1)")] = None,
    timeout: Annotated[float | None, Opt(min=1, help="start no trial after this many "
                                         "seconds")] = None,
    seed: Annotated[int | None, Opt(min=0, help="seed of the sampler and of every trial's "
                                    "training (default: the config's)")] = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    learning_rate: LearningRateOpt = None,
    momentum: MomentumOpt = None,
    dtype: DtypeOpt = None,
    limit_train: Annotated[int | None, Opt(min=1, help="use the first N training images "
                                           "(validation split included)")] = None,
    heartbeat: Annotated[int, Opt(min=1, help="seconds between a trial's heartbeats; one "
                                  "silent for 3x this is failed and run again")
                         ] = HEARTBEAT_SECONDS,
    cluster: ClusterOpt = None,
    ship_data: ShipDataOpt = False,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    as_json: Annotated[bool, Opt("--json", help="print only a JSON summary")] = False,
    log: LogOpt = None,
) -> None:
    """Search hyper-parameters: train trials on a validation split, keep the best config.
    With --cluster: the --workers run as tasks on a Dask cluster."""
    with cli_errors():
        full = load_config(config).replace(seed=seed, batch_size=batch_size,
                                           learning_rate=learning_rate, momentum=momentum,
                                           dtype=dtype)
        cfg = full.replace(epochs=epochs, validation_split=validation_split)
        if not cfg.validation_split:
            cfg = cfg.replace(validation_split=0.1)
        name = (check_run_name(study, "study name") if study is not None else
                check_run_name(config.stem, "study name",
                               hint=f"; the study is named after the config file "
                                    f"{str(config)!r}: name it with --study NAME"))
        # auto: chosen for the base config
        backend, why = resolve_backend(backend, [cfg], device, on_cluster=cluster is not None)
        say_auto(backend, why, as_json)
        settings = SweepSettings(
            cfg, load_space(space, cfg), trials, sweep_dir or Path("sweeps") / name, name,
            storage=storage, sampler=sampler, seed=cfg.seed, backend=backend, device=device,
            data_dir=data_dir, dataset=get_spec(dataset or "mnist").name,
            limit_train=limit_train, timeout=timeout, workers=workers,
            heartbeat=heartbeat, full_config=full)
        on_cluster = cluster_option(cluster, ship_data, tls_ca, tls_cert, tls_key, batch=True)
        executor, data = None, None
        if on_cluster is not None:
            data = load_data(data_dir, show=not as_json, dataset=settings.dataset)
            executor = cluster_executor(settings, on_cluster, data, data.fingerprint())
        live = not as_json and console.is_terminal
        chosen = targets(log)
        terminated: list[int] = []
        previous = signal.signal(signal.SIGTERM, lambda n, _: _interrupt(terminated, n))
        try:
            with TrialTable([p.path for p in settings.space.params], cfg.epochs, live,
                            silent=as_json) as table, tracking(chosen) as session:
                logs = SweepLog(session, settings.sweep_dir) if session else None

                def on_update(study: Any, force: bool = False) -> None:
                    table.update(study, force)
                    if logs is not None:  # each trial once it has ended
                        logs.on_update(study)

                try:
                    summary = run_sweep(settings, data, on_update=on_update, executor=executor)
                finally:
                    if logs is not None:
                        logs.finish()
        except KeyboardInterrupt:
            err_console.print(f"interrupted: the sweep's trials so far are in "
                              f"{shown(str(settings.sweep_dir))}; run the same command again "
                              f"to resume", soft_wrap=True)
            raise typer.Exit(code=143 if terminated else 130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        if as_json:
            print_json(summary)
        else:
            print_summary(summary)
        if "best" not in summary:
            raise typer.Exit(code=1)


def _interrupt(terminated: list[int], signum: int) -> None:
    terminated.append(signum)
    raise KeyboardInterrupt
