"""MLflow: one MLflow run per training run, nested under a batch's or a sweep's parent run.

Everything goes through MlflowClient (no global active run), and `sync` is idempotent: it
sends what the MLflow run lacks of the run directory (params, epochs, final figures,
artifacts), so a live run completed at its end, a run the server missed, and a run sent twice
all end as one complete MLflow run. Runs are matched by tags: the run directory's metrics.json
run_id once finished, the directory's path while it trains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.track.record import RunRecord, config_hash, epoch_scalars, flatten, path_key

DEFAULT_URI = "sqlite:///runs/mlflow.db"  # MLflow 3 refuses its file store without an opt-in
EXPERIMENT = "trainer"
RUN_ID, RUN_DIR, GROUP, GROUP_DIR = "trainer.run_id", "trainer.run_dir", "trainer.group", \
    "trainer.group_dir"
CONFIG_HASH, STATE, KIND, COMPLETE = "trainer.config_sha256", "trainer.state", "trainer.kind", \
    "trainer.complete"
PARENT = "mlflow.parentRunId"
STATUS = {"finished": "FINISHED", "pruned": "KILLED", "diverged": "FAILED", "failed": "FAILED"}
# MLflow's own HTTP client retries for minutes (the outbox retries instead, briefly), and
# prints a line with the run's URL on stdout (where --json's output goes)
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
PARAMS_PER_CALL, METRICS_PER_CALL = 100, 1000  # MLflow's log_batch limits


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def quiet_mlflow() -> None:
    """No migration chatter (alembic) or client warnings between the trainer's lines (after
    `import mlflow`, which sets its logger's level)."""
    import mlflow  # noqa: F401
    import mlflow.entities  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for key, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def preload() -> None:
    """What the outbox's thread will import, imported now, before training: an import holds
    the GIL for a second, which beside a training epoch would slow it."""
    quiet_mlflow()
    with contextlib.suppress(ImportError):  # the onnx extra, for model.onnx
        import trainer.serve.export  # noqa: F401


@dataclass
class Server:
    """A tracking server (or SQLite file) and the experiment runs go to; connects on first
    use, from the outbox's thread, so a slow server never holds up the caller."""

    uri: str = field(default_factory=tracking_uri)
    _client: Any = None
    _experiment: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            quiet_mlflow()
            from mlflow.tracking import MlflowClient

            if self.uri == DEFAULT_URI:
                Path("runs").mkdir(exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment(self) -> str:
        if self._experiment is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
            found = self.client.get_experiment_by_name(name)
            if found is not None:
                self._experiment = found.experiment_id
            else:  # next to the default database, its artifacts; a server has its own root
                where = Path("runs/mlartifacts").resolve().as_uri() \
                    if self.uri == DEFAULT_URI else None
                # the UI's "model training" view, not its GenAI one
                self._experiment = self.client.create_experiment(
                    name, artifact_location=where, tags={"mlflow.experimentKind":
                                                         "custom_model_development"})
        return self._experiment

    def find(self, tag: str, value: str) -> list[Any]:
        return self.client.search_runs([self.experiment], f"tags.`{tag}` = '{value}'",
                                       max_results=10)


def find_run(server: Server, record: RunRecord) -> Any | None:
    """The MLflow run of this run directory: by its run_id, else one of the same directory
    without a run_id (a live run that never got as far, or a run that has none: a pruned
    trial, a diverged run)."""
    if record.run_id:
        runs = server.find(RUN_ID, record.run_id)
        if runs:
            return runs[0]
    return next((r for r in server.find(RUN_DIR, path_key(record.path))
                 if not r.data.tags.get(RUN_ID)), None)


def start_run(server: Server, path: Path, name: str, config: dict[str, Any],
              parent: str | None, group: str | None) -> str:
    """A live run's MLflow run: found again (a resumed run) or created; its id."""
    for run in server.find(RUN_DIR, path_key(path)):
        if not run.data.tags.get(RUN_ID):
            return run.info.run_id
    tags = {RUN_DIR: path_key(path), CONFIG_HASH: config_hash(config), KIND: "run",
            "trainer.path": str(path.resolve())}
    tags |= {PARENT: parent} if parent else {}
    tags |= {GROUP: group} if group else {}
    run_id = server.client.create_run(server.experiment, run_name=name, tags=tags).info.run_id
    _log_params(server.client, run_id, flatten(config))  # the rest once the run has ended
    return run_id


def log_epoch(server: Server, run_id: str, row: dict[str, Any], samples: int | None) -> None:
    """One epoch's scalars in one call, at step = the epoch."""
    from mlflow.entities import Metric

    stamp = _now_ms()
    metrics = [Metric(k, v, stamp, int(row["epoch"]))
               for k, v in epoch_scalars(row, samples).items()]
    server.client.log_batch(run_id, metrics=metrics)


def sync(server: Server, record: RunRecord, parent: str | None = None,
         run_id: str | None = None) -> tuple[str, bool]:
    """Make the MLflow run of `record` complete; returns its id and whether anything was
    sent (False: it was complete already)."""
    client = server.client
    run = client.get_run(run_id) if run_id else find_run(server, record)
    if run is not None and run.data.tags.get(COMPLETE) == "1":
        return run.info.run_id, False
    if run is None:
        run_id = start_run(server, record.path, record.name, record.config, parent,
                           record.group)
        run = client.get_run(run_id)
    run_id = run.info.run_id
    if parent and run.data.tags.get(PARENT) != parent:  # its parent was down when it started
        client.set_tag(run_id, PARENT, parent)
    _send_params(client, run, record)
    _send_metrics(client, run_id, record)
    _send_artifacts(client, run_id, record)
    tags = {STATE: record.state, COMPLETE: "1"} | ({RUN_ID: record.run_id} if record.run_id
                                                    else {})
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, STATUS[record.state])
    return run_id, True


def _send_params(client: Any, run: Any, record: RunRecord) -> None:
    have = run.data.params
    _log_params(client, run.info.run_id,
                {k: v for k, v in record.params().items() if k not in have})


def _log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_PER_CALL):
        client.log_batch(run_id, params=items[i:i + PARAMS_PER_CALL])


def _send_metrics(client: Any, run_id: str, record: RunRecord) -> None:
    from mlflow.entities import Metric

    done = {m.step for m in client.get_metric_history(run_id, "loss")}
    stamp = _now_ms()
    metrics = [Metric(k, v, stamp, int(row["epoch"])) for row in record.history
               if row.get("epoch") not in done
               for k, v in epoch_scalars(row, record.samples).items()]
    if not client.get_run(run_id).data.metrics.keys() & record.final().keys():
        last = int(record.history[-1]["epoch"]) if record.history else 0
        metrics += [Metric(k, v, stamp, last) for k, v in record.final().items()]
    for i in range(0, len(metrics), METRICS_PER_CALL):
        client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_CALL])


def _send_artifacts(client: Any, run_id: str, record: RunRecord) -> None:
    have = {f.path for f in client.list_artifacts(run_id)}
    for path in record.artifacts():
        if path.name not in have:
            client.log_artifact(run_id, str(path))
    if "model.onnx" not in have and record.state == "finished":
        with tempfile.TemporaryDirectory(prefix="trainer-onnx-") as folder:
            problem = _onnx(record.path, Path(folder) / "model.onnx")
            if problem is None:
                client.log_artifact(run_id, str(Path(folder) / "model.onnx"))
            elif problem:
                client.set_tag(run_id, "trainer.onnx", problem)


def _onnx(run_dir: Path, out: Path) -> str | None:
    """Export the model to `out`: None when done, "" without the onnx extra, else why not
    (the run is logged all the same)."""
    try:
        from trainer.serve.export import export_onnx
    except ImportError:
        return ""
    try:
        export_onnx(run_dir, out)
    except Exception as e:  # the export's own failure, not the server's: say it, go on
        return f"not exported: {type(e).__name__}: {e}"[:500]
    return None


def start_parent(server: Server, group_dir: Path, kind: str) -> str:
    """A batch's or a sweep's parent run: found again by its directory, or created."""
    key = path_key(group_dir)
    for run in server.find(GROUP_DIR, key):
        if run.data.tags.get(PARENT) is None:
            return run.info.run_id
    tags = {GROUP_DIR: key, KIND: kind, GROUP: group_dir.name,
            "trainer.path": str(group_dir.resolve())}
    return server.client.create_run(server.experiment, run_name=group_dir.name,
                                    tags=tags).info.run_id


def finish_parent(server: Server, run_id: str, group_dir: Path, files: tuple[str, ...]) -> None:
    """The group's own files (manifest, summary, curves); then the parent is finished."""
    client = server.client
    have = {f.path for f in client.list_artifacts(run_id)}
    for name in files:
        if (group_dir / name).is_file() and name not in have:
            client.log_artifact(run_id, str(group_dir / name))
    client.set_terminated(run_id, "FINISHED")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
