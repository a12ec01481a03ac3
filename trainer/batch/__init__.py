"""Batch runs: every config with every seed, in one group directory, summarised per config.

    from trainer.batch import train_batch
    summary = train_batch(["configs/default.json", "configs/hidden-64.json"], seeds=[0, 1, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainer.backends import Backend
from trainer.data.dataset import Dataset, load_dataset
from trainer.run.auto import resolve_backend
from trainer.run.train import check_data, check_memory, load_backend

from .cluster import train_on_cluster
from .connect import Cluster
from .plan import (
    Batch,
    Member,
    default_name,
    is_group,
    load_configs,
    open_group,
    parse_seeds,
    read_manifest,
)
from .run import Event, Place, run_members
from .summary import summarise, write_summary

__all__ = ["Batch", "Cluster", "Event", "Member", "Place", "is_group", "parse_seeds", "run_batch",
           "train_batch"]


def run_batch(batch: Batch, place: Place, data: Dataset, backend: Backend,
              on_event: Callable[[Event], None] = lambda event: None,
              stop_requested: Callable[[], int | None] | None = None) -> dict[str, Any]:
    """Train (or resume, or keep) every member of `batch` in `place.group`, then write and
    return the group's summary. Interrupted (checkpoints written) if a stop is requested."""
    run_members(batch, place, data, backend, on_event, stop_requested)
    summary, runs = summarise(batch, place.group)
    write_summary(place.group, summary, runs)
    return summary


def train_batch(configs: Sequence[str | Path], seeds: list[int] | None = None, *,
                overrides: dict[str, Any] | None = None, limit_train: int | None = None,
                limit_test: int | None = None, backend: str = "numpy",
                device: str | None = None, data_dir: Path | None = None,
                dataset: str = "mnist",
                data: Dataset | None = None, run_dir: Path | None = None,
                name: str | None = None, root: Path = Path("runs"), workers: int = 1,
                checkpoint_every: int | None = None, keep_checkpoints: bool = False,
                on_event: Callable[[Event], None] = lambda event: None,
                stop_requested: Callable[[], int | None] | None = None,
                on_group: Callable[[Path, bool], None] = lambda path, resumed: None,
                cluster: Cluster | None = None,
                on_backend: Callable[[str, str], None] = lambda name, why: None
                ) -> dict[str, Any]:
    """The whole batch from config files: checked up front (every config against the data and
    the memory, before any directory is made), its group found again or made (`on_group(path,
    resumed)` is told which), run, summarised. `seeds` None: each config's own seed.
    `cluster`: each run a task on that Dask cluster (the backend then loads on the workers
    only, and checks its memory there); the runs that failed are the summary's `failed`.
    `backend` auto: the one run/auto.py picks for the configs, told to `on_backend(name, why)`
    (the group records it: the same command again picks it again and resumes)."""
    paths = [Path(c) for c in configs]
    loaded = load_configs(paths, {k: v for k, v in (overrides or {}).items() if v is not None})
    backend, why = resolve_backend(backend, list(loaded.values()), device, cluster is not None)
    if why is not None:
        on_backend(backend, why)
    be = load_backend(backend, device) if cluster is None else None
    data = data if data is not None else load_dataset(data_dir, dataset=dataset)
    for cfg in loaded.values():
        check_data(cfg, data, limit_train, limit_test)
        if be is not None:
            check_memory(cfg, data, be, limit_train, limit_test)
    batch = Batch(loaded, seeds, limit_train, limit_test, be.name if be else backend,
                  name or _group_name(run_dir, list(loaded)))
    fingerprint = data.fingerprint()
    if cluster is not None:
        return train_on_cluster(batch, data, cluster, Place(Path(), fingerprint, data_dir,
                                                            dataset, device), run_dir, root,
                                on_event, stop_requested, on_group)
    assert be is not None  # loaded above whenever there is no cluster
    group, resumed = open_group(batch, fingerprint, run_dir, root)
    on_group(group, resumed)
    place = Place(group, fingerprint, data_dir, dataset, device, workers, checkpoint_every,
                  keep_checkpoints)
    return run_batch(batch, place, data, be, on_event, stop_requested)


def _group_name(run_dir: Path | None, config_names: list[str]) -> str:
    """A batch's name without --name: an existing group's own (its folder, runs/<time>-<name>,
    is not its name), a new --run-dir's folder name, else the configs' names."""
    if run_dir is not None and is_group(run_dir):
        recorded = read_manifest(run_dir).get("name")
        if isinstance(recorded, str):
            return recorded
    return run_dir.name if run_dir is not None else default_name(config_names)
