"""`trainer train`: train, evaluate, write the run; resume, stop cleanly, fail clearly."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from trainer.backends import Backend
from trainer.cli.batch import batch_cli
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
from trainer.cli.display import TrainProgress, held_out, load_data, notice, print_report
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
)
from trainer.cli.track import LogOpt, chain, targets, tracked_run
from trainer.core.config import Config
from trainer.core.schedule import constant_rate
from trainer.core.step import select_step
from trainer.data.dataset import Dataset
from trainer.errors import UsageError
from trainer.fileio import atomic_write_json
from trainer.run.auto import AUTO, available, resolve_backend
from trainer.run.catalog import resolve_run
from trainer.run.checkpoint import LoopState, load_checkpoint, save_checkpoint
from trainer.run.failures import recorded_failures
from trainer.run.results import Callbacks, Interrupted, TrainResult
from trainer.run.rundir import (
    check_run_name,
    claim_run_dir,
    hold_run,
    run_metrics,
    run_record,
    write_run,
)
from trainer.run.train import check_data, check_memory, load_backend, train
from trainer.track import train_samples


def print_config(config: Config, name: str, backend: str, device: str, how: str = "") -> None:
    table = Table(title=f"Network configuration: {shown(name)}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("network", config.describe())
    drop = [f"{i}: {layer.dropout:g}" for i, layer in enumerate(config.layers) if layer.dropout]
    if drop:
        table.add_row("dropout", ", ".join(drop))
    core = ("learning_rate", "epochs", "momentum", "batch_size")  # what neural-net-rs showed
    for key, value in config.to_dict().items():
        field = Config.model_fields[key]
        default = field.default.model_dump() if hasattr(field.default, "model_dump") else (
            field.default)
        if key != "layers" and (key in core or value != default):
            table.add_row(key, str(value))
    table.add_row("backend", f"{backend} ({device}{'; ' + how if how else ''})")
    console.print(table)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Any]:
    """The first SIGINT or SIGTERM asks the loop to stop after its step (and checkpoint); a
    second one interrupts at once. Yields a function telling which signal came, if any."""
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if received:
            raise KeyboardInterrupt  # the second one: stop now; atomic writes leave no debris
        received.append(signum)
        notice(f"{signal.Signals(signum).name}: stopping after this step, with a checkpoint "
               f"(again: stop now)")  # one line at 80 columns

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def resumed_run(resume: Path, overrides: dict[str, Any]
                ) -> tuple[Config, LoopState, str, int | None, int | None]:
    """The checkpoint's config and state, and its run's name, limit_train and limit_test."""
    if any(v is not None for v in overrides.values()):
        raise UsageError("--resume continues the run as it was configured: drop CONFIG and "
                         "the overrides (" + ", ".join(k for k, v in overrides.items()
                                                      if v is not None) + ")")
    state = load_checkpoint(resume, warn=lambda m: err_console.print(f"[yellow]warning:[/] "
                                                                      f"{shown(m)}"))
    run = state.run
    try:
        cfg = Config.from_dict(run["config"], source=f"{resume} checkpoint")
        return cfg, state, run["name"], run["limit_train"], run["limit_test"]
    except KeyError:
        raise UsageError(f"{resume}: the checkpoint does not record its run") from None


def _resumed_backend(given: str | None, state: LoopState | None, cfg: Config,
                     device: str | None) -> tuple[str, str | None]:
    """The backend to train on, and why auto chose it (None: it was named): a resumed run
    continues on its own unless told otherwise (another backend's arithmetic would not give
    the uninterrupted run's bits); auto too, where its own loads here."""
    recorded = state.run.get("backend") if state is not None else None
    recorded = recorded if isinstance(recorded, str) else None
    why = None
    if given == AUTO and recorded is not None and available(recorded, device) is not None:
        given, why = recorded, "the run's own: resumed on it, the run stays bit for bit"
    elif given is not None:
        given, why = resolve_backend(given, [cfg], device)
    if given is not None and recorded is not None and given != recorded:
        err_console.print(f"note: this run was trained on {shown(recorded)} so far; "
                          f"resumed on {shown(given)}, it will not be bit for bit the "
                          f"uninterrupted run", soft_wrap=True)
    return given or recorded or "numpy", why


def _check_resume(path: Path, state: LoopState, data: Dataset, fingerprint: str,
                  cfg: Config) -> str | None:
    """A run resumes on the data it was trained on (UsageError otherwise); a finished run is
    left as it is: then the message that says so."""
    recorded = state.run.get("data")
    if recorded is None:
        raise UsageError(f"{path}: the checkpoint records no data fingerprint (written before "
                         f"2026-11-30): it cannot tell whether this is the same data; train "
                         f"it again")
    if recorded != fingerprint:
        raise UsageError(f"{path} was trained on other data (SHA-256 {recorded[:16]}...) than "
                         f"{data.source} {data.path} gives (SHA-256 {fingerprint[:16]}...): "
                         f"resume it with the --data-dir it was trained on")
    if state.epoch > cfg.epochs and all((path / name).is_file()
                                        for name in ("model.safetensors", "metrics.json")):
        return (f"{path} is finished: {cfg.epochs} epochs trained, its model and metrics "
                f"written; nothing to resume, nothing changed")
    return None


def _run_name(name: str | None, config: Path | None) -> str:
    """--name, else the config file's name (`default` built in, `stdin` for `-`)."""
    if name is not None:
        return check_run_name(name)
    stem = "default" if config is None else "stdin" if str(config) == "-" else config.stem
    return check_run_name(stem, hint=f"; the run is named after the config file {str(config)!r}"
                                     f": name it with --name NAME")


def train_cmd(
    configs: Annotated[list[Path] | None, typer.Argument(
        metavar="CONFIG", help="JSON config (default: built-in; -: standard input); "
                                    "several, or --seeds: a batch")] = None,
    backend: Annotated[str | None, Opt(help="numpy (default; --resume: the run's own) | numba | "
                                            "array-api-strict | torch | cupy | jax | auto "
                                            "(the fastest here for the config)")] = None,
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
    dataset: DatasetOpt = None,
    run_dir: Annotated[Path | None, Opt(help="run directory (default runs/<time>-<name>); a "
                                             "batch's group directory")] = None,
    name: Annotated[str | None, Opt(help="run name (default: the config's file name); a "
                                         "batch's: the configs' names joined by +")] = None,
    seed: Annotated[int | None, Opt(min=0, help="override the config's seed")] = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    learning_rate: LearningRateOpt = None,
    momentum: MomentumOpt = None,
    dtype: DtypeOpt = None,
    validation_split: Annotated[float | None, Opt(
        min=0, help="hold out a share (0.1) or a count (5000) of the training images for "
                    "validation (overrides the config's)")] = None,
    limit_train: Annotated[int | None, Opt(min=1, help="train on the first N images only")] = None,
    limit_test: Annotated[int | None, Opt(min=1, help="test on the first N images only")] = None,
    resume: Annotated[str | None, Opt(metavar="RUN", help="continue this run: its directory, "
                                      "its id from `trainer runs`, or latest")] = None,
    checkpoint_every: Annotated[int | None, Opt(min=1, help="also checkpoint every N steps "
                                                "(always: every epoch)")] = None,
    keep_checkpoints: Annotated[bool, Opt("--keep-checkpoints", help="a finished run keeps "
                                          "its previous checkpoint too (default: only the "
                                          "latest)")] = False,
    seeds: Annotated[str | None, Opt(help="a batch: every config with seeds 0 to N-1 "
                                          "(--seeds 5) or with these (--seeds 0,1,2)")] = None,
    workers: Annotated[int, Opt(min=1, help="a batch's worker processes, each with its share "
                                            "of the BLAS threads")] = 1,
    cluster: ClusterOpt = None,
    ship_data: ShipDataOpt = False,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="plain lines, no bars or tables")] = False,
    as_json: Annotated[bool, Opt("--json", help="print a JSON summary instead")] = False,
    log: LogOpt = None,
) -> None:
    """Train a network, evaluate it on the test set and write a run directory. Several
    configs, or --seeds: a batch of runs in one group directory, summarised per config; the
    same command again resumes it."""
    with cli_errors():
        overrides = {"seed": seed, "epochs": epochs, "batch_size": batch_size,
                     "learning_rate": learning_rate, "momentum": momentum, "dtype": dtype,
                     "validation_split": validation_split}
        chosen = targets(log)
        is_batch = len(configs or ()) > 1 or seeds is not None
        on_cluster = cluster_option(cluster, ship_data, tls_ca, tls_cert, tls_key, is_batch)
        if is_batch:
            if resume is not None:
                raise UsageError("--resume continues one run; a batch resumes when the same "
                                 "command runs again")
            if seed is not None and seeds is not None:
                raise UsageError("give --seed (one run) or --seeds (a batch), not both")
            options = {"backend": backend or "numpy", "device": device, "data_dir": data_dir,
                       "dataset": dataset or "mnist",
                       "run_dir": run_dir, "name": name, "limit_train": limit_train,
                       "limit_test": limit_test, "checkpoint_every": checkpoint_every,
                       "cluster": on_cluster, "keep_checkpoints": keep_checkpoints}
            with stop_on_signals() as stop_requested:
                batch_cli(configs or [], seeds, workers, overrides, options, stop_requested,
                          quiet, as_json, chosen)
            return
        if workers != 1:
            raise UsageError("--workers runs a batch's runs side by side: give several configs "
                             "or --seeds")
        config = configs[0] if configs else None
        state = None
        resume_dir = resolve_run(resume) if resume is not None else None
        if resume_dir is not None:
            given = overrides | {"CONFIG": config, "--limit-train": limit_train,
                                 "--limit-test": limit_test, "--name": name,
                                 "--run-dir": run_dir}
            cfg, state, run_name, limit_train, limit_test = resumed_run(resume_dir, given)
        else:
            cfg = load_config(config)
            cfg = cfg.replace(**overrides)
            run_name = _run_name(name, config)
        name_used, why = _resumed_backend(backend, state, cfg, device)
        loaded = load_backend(name_used, device)
        say_auto(loaded.name, why, as_json)
        dataset = dataset or (state.run.get("dataset") if state else None) or "mnist"
        data = load_data(data_dir, show=not (quiet or as_json), dataset=dataset)
        check_data(cfg, data, limit_train)  # before the run directory exists: nothing left
        check_memory(cfg, data, loaded, limit_train, limit_test)
        fingerprint = data.fingerprint()
        finished = _check_resume(resume_dir, state, data, fingerprint, cfg) if state else None
        if finished:
            console.print(shown(finished), soft_wrap=True)
            return
        if not (quiet or as_json):
            print_config(cfg, run_name, loaded.name, loaded.device_name,
                         select_step(cfg, loaded).note)
        path = resume_dir if resume_dir is not None else claim_run_dir(run_dir, run_name)
        if resume_dir is None:
            atomic_write_json(path / "config.json", cfg.to_dict())
        elif not quiet and not as_json:
            console.print(f"Resuming at epoch {state.epoch}, step {state.step}")
        record = run_record(cfg, run_name, limit_train, limit_test, data, fingerprint,
                            loaded.name)
        samples = train_samples(cfg, len(data.train_labels), limit_train)
        with hold_run(path), tracked_run(chosen, path, run_name, cfg, samples) as on_epoch:
            result, late_signal = _run(cfg, loaded, data, path, record, state,
                                       checkpoint_every, quiet, as_json, on_epoch)
            _report(loaded, data, path, run_name, result, fingerprint, quiet, as_json,
                    keep_checkpoints)
        if late_signal:  # it came during the final evaluation: the run is whole, and written
            err_console.print(f"{signal.Signals(late_signal).name} came after the last "
                              f"training step: the run is complete and written to "
                              f"{shown(str(path))}", soft_wrap=True)
            raise typer.Exit(code=128 + late_signal)


def _run(cfg: Config, backend: Backend, data: Dataset, path: Path, record: dict[str, Any],
         state: LoopState | None, checkpoint_every: int | None, quiet: bool,
         as_json: bool, on_epoch: Any = None) -> tuple[TrainResult, int | None]:
    """Train with the live display, signals and checkpoints; `record` (the run's config, name
    and limits) goes into every checkpoint, so that --resume can restart it. Returns the
    result and the signal that came during the final evaluation, if one did."""
    def checkpoint(loop_state: LoopState) -> None:
        save_checkpoint(path, dataclasses.replace(loop_state, run=record))

    bars = TrainProgress(console, cfg.epochs, live=not quiet and console.is_terminal,
                         silent=as_json, show_lr=constant_rate(cfg) is None)
    try:
        with recorded_failures(path, cfg, backend), stop_on_signals() as stop_requested, \
                bars as progress:
            callbacks = Callbacks(
                on_step=progress.on_step if progress.live else None,
                on_epoch=chain(progress.on_epoch, on_epoch), on_test_chunk=progress.on_test_chunk,
                stop_requested=stop_requested, checkpoint=checkpoint,
                checkpoint_every=checkpoint_every)
            result = train(cfg, data, backend, limit_train=record["limit_train"],
                           limit_test=record["limit_test"], resume=state, callbacks=callbacks)
            return result, stop_requested()
    except Interrupted as e:
        where = (f"after epoch {e.epoch - 1}" if e.step == 0
                 else f"in epoch {e.epoch} after step {e.step}")
        err_console.print(f"Stopped {where}; checkpoint in "
                          f"{shown(str(path))}.\nResume with:\n  trainer train --resume "
                          f"{shown(str(path))}", soft_wrap=True)
        raise typer.Exit(code=e.exit_code) from None


def _report(backend: Backend, data: Dataset, path: Path, run_name: str, result: TrainResult,
            fingerprint: str, quiet: bool, as_json: bool, keep_checkpoints: bool) -> None:
    classes = data.class_names
    metrics = run_metrics(result, classes, backend.version, data, fingerprint)
    write_run(path, result, classes, metrics, title=run_name, keep_checkpoints=keep_checkpoints)
    if as_json:
        print_json({"run_dir": str(path)} | metrics)
        return
    best = result.best()
    console.print(f"Final training accuracy: {result.train_accuracy:.2%} (the trained network on "
                  f"the whole training set, after the last update)")
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
    console.print(f"Run directory: {shown(str(path))}", soft_wrap=True)
