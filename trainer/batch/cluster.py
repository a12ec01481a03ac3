"""A batch on a Dask cluster: each member is one Dask task (remote.run_task), its files come
back to the driver, which alone writes the group directory, a run directory at a time,
atomically. Finished runs are kept; the same command again trains only what is missing."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.data.dataset import Dataset
from trainer.errors import UsageError
from trainer.run.catalog import is_run_dir, read_run
from trainer.run.checkpoint import LATEST, PREVIOUS
from trainer.run.results import Interrupted
from trainer.run.rundir import hold_run

from .plan import Batch, Member
from .remote import Task, run_task, worker_versions
from .run import Event, Place
from .rundirs import write_run_dir

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_TIMEOUT_SECONDS = 5  # an unreachable scheduler: exit 2 well within 10 s
STOP_GRACE_SECONDS = 30  # after Ctrl-C: the running tasks checkpoint and send their files
POLL_SECONDS = 0.2
ADDRESS = re.compile(r"(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
                     r":(?P<port>\d{1,5})")
INSTALL = "pip install 'trainer[cluster]'"


@dataclass(frozen=True)
class Cluster:
    """Where a batch trains: a Dask scheduler's address, the TLS files of the client (None:
    Dask's own config), whether the data travels through the cluster (`ship_data`) or each
    worker reads its own, and whether each run asks for a GPU (None: when the backend is a
    GPU's)."""

    address: str
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ship_data: bool = False
    gpu: bool | None = None


def require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--cluster needs Dask's distributed ({e}): {INSTALL}") from None


def check_address(address: str) -> str:
    """`tcp://host:port` or `tls://host:port` (no scheme: tcp); UsageError otherwise."""
    match = ADDRESS.fullmatch(address.strip())
    if not match or match["scheme"] not in (None, "tcp", "tls") or \
            not 0 < int(match["port"]) < 65536:
        raise UsageError(f"--cluster {address!r} is not a Dask scheduler address: give "
                         f"tcp://HOST:PORT or tls://HOST:PORT (e.g. tcp://127.0.0.1:8786)")
    return f"{match['scheme'] or 'tcp'}://{match['host']}:{int(match['port'])}"


def is_loopback(address: str) -> bool:
    """The scheduler is on this machine's loopback (and so is every worker that reaches it)."""
    match = ADDRESS.fullmatch(address)
    host = match["host"].strip("[]") if match else ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def exposed(address: str) -> bool:
    """Neither TLS nor loopback: anyone who reaches the scheduler can run code through it."""
    return not address.startswith("tls://") and not is_loopback(address)


def wants_gpu(cluster: Cluster, backend: str, device: str | None) -> bool:
    if cluster.gpu is not None:
        return cluster.gpu
    return backend == "cupy" or (device or "").startswith(("cuda", "gpu"))


@contextlib.contextmanager
def connect(cluster: Cluster) -> Iterator[Any]:
    """A client of the scheduler; UsageError in one line (naming the address) if it cannot
    be reached within CONNECT_TIMEOUT_SECONDS, refuses us, or speaks another protocol."""
    require_distributed()
    from distributed import Client
    from distributed.security import Security

    address = check_address(cluster.address)
    given = (("tls_ca_file", "--tls-ca", cluster.tls_ca),
             ("tls_client_cert", "--tls-cert", cluster.tls_cert),
             ("tls_client_key", "--tls-key", cluster.tls_key))
    tls = {key: str(path) for key, _, path in given if path is not None}
    for _, option, path in given:
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{option} {path}: no such file")
    security = Security(require_encryption=address.startswith("tls://"), **tls) if tls else None
    probe(address)
    with _quiet_dask():
        try:
            client = Client(address, security=security, timeout=CONNECT_TIMEOUT_SECONDS,
                            set_as_default=False)
        except Exception as e:  # OSError, TimeoutError, ssl.SSLError, ValueError: all one line
            raise UsageError(f"cannot reach the Dask scheduler at {address}: "
                             f"{_reason(e)}") from None
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=CONNECT_TIMEOUT_SECONDS)


def probe(address: str) -> None:
    """A plain TCP connection first: a refused or unroutable port is said at once (Dask's
    client would retry it until its timeout)."""
    match = ADDRESS.fullmatch(address)
    assert match is not None
    try:
        socket.create_connection((match["host"].strip("[]"), int(match["port"])),
                                 timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as e:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: "
                         f"{e.strerror or type(e).__name__ or e}") from None


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if "tls" in text.lower() or "ssl" in text.lower() or "certificate" in text.lower():
        text += " (a tls:// scheduler needs --tls-ca, --tls-cert and --tls-key)"
    return text[:300]


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask logs its connection retries and closed comms: the CLI says what went wrong."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_workers(client: Any, gpu: bool) -> None:
    """Every worker runs the driver's trainer code and libraries; one declares a GPU if the
    runs want one. UsageError naming the worker and what differs otherwise."""
    ours = worker_versions()
    try:
        theirs = client.run(worker_versions)
    except Exception as e:  # a worker without trainer cannot even unpickle the call
        raise UsageError(f"the cluster's workers cannot run trainer ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}): {INSTALL} in each worker's "
                         f"environment") from None
    for worker, versions in sorted(theirs.items()):
        differ = [f"{k} {versions.get(k)} there, {v} here" for k, v in ours.items()
                  if versions.get(k) != v]
        if differ:
            raise UsageError(f"worker {worker} runs other versions than this driver: "
                             f"{'; '.join(differ)}; install the same on every machine")
    if gpu and not any("GPU" in w.get("resources", {}) for w in _workers(client).values()):
        raise UsageError("the runs want a GPU, but no worker of the cluster declares one: start "
                         "GPU workers with `dask cuda worker` or `dask worker --resources GPU=1`")


def _workers(client: Any) -> dict[str, Any]:
    """Every worker the scheduler knows (newer Dask lists 5 unless asked for all)."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:
        return client.scheduler_info()["workers"]


def run_cluster(client: Any, batch: Batch, place: Place, data: Dataset, cluster: Cluster,
                on_event: Callable[[Event], None],
                stop_requested: Callable[[], int | None] | None = None) -> list[dict[str, Any]]:
    """Train every member not yet finished on the cluster `client` is connected to (checked
    by check_workers); returns the runs that failed (run, worker, message). Interrupted
    (finished runs written, running ones checkpointed) once a stop is requested."""
    todo = _plan(batch, place, on_event)
    if not todo:
        return []
    gpu = wants_gpu(cluster, batch.backend, place.device)
    with hold_run(place.group):
        from distributed import Event as DaskEvent

        name = f"trainer-{uuid.uuid4().hex[:12]}"
        events: queue.Queue[Event] = queue.Queue()
        client.subscribe_topic(name, lambda item: events.put(item[1]))
        stop = DaskEvent(name, client=client)
        shipped = client.scatter(data, hash=False) if cluster.ship_data else None
        futures = {}
        try:
            for member, files in todo:
                task = Task(member, batch, place.dataset, place.fingerprint, place.device,
                            name, name, files)
                futures[client.submit(run_task, task, shipped, key=f"{name}-{member.dirname}",
                                      pure=False, resources={"GPU": 1} if gpu else None)] = member
                on_event({"event": "queued", "run": member.dirname})
            return _collect(client, futures, place, events, on_event, stop,
                            stop_requested or (lambda: None))
        except BaseException:  # a second Ctrl-C, or the Python API's KeyboardInterrupt
            stop.set()  # the running tasks stop too, not only the queued ones
            raise
        finally:
            client.cancel(list(futures), force=True)
            client.unsubscribe_topic(name)


def _plan(batch: Batch, place: Place, on_event: Callable[[Event], None]
          ) -> list[tuple[Member, dict[str, bytes]]]:
    """The members to train, with the files of each one to resume (config and checkpoints);
    the finished and diverged ones are kept (and said so)."""
    todo = []
    for member in batch.members():
        path, files = place.group / member.dirname, {}
        if path.is_dir() and is_run_dir(path):
            info = read_run(path)
            if info.state in ("finished", "diverged"):
                on_event({"event": "kept", "run": member.dirname, "state": info.state,
                          "test_accuracy": info.test_accuracy, "seconds": info.seconds})
                continue
            if info.state == "damaged":
                raise UsageError(f"{path} is damaged ({info.problem}): remove it and run the "
                                 f"command again to train it anew")
            files = {n: (path / n).read_bytes() for n in ("config.json", LATEST, PREVIOUS)
                     if (path / n).is_file()}
        todo.append((member, files))
    return todo


def _collect(client: Any, futures: dict[Any, Member], place: Place, events: queue.Queue,
             on_event: Callable[[Event], None], stop: Any,
             stop_requested: Callable[[], int | None]) -> list[dict[str, Any]]:
    """Write each run as its task finishes; on a stop request, cancel the queued tasks and
    give the running ones STOP_GRACE_SECONDS to checkpoint, then raise Interrupted."""
    pending, started, failed = dict(futures), set(), []
    stopped: int | None = None
    deadline = float("inf")
    while pending and time.monotonic() < deadline:
        while not events.empty():
            event = events.get()
            started.add(event.get("run"))
            on_event(event)
        if stopped is None and (stopped := stop_requested()):
            stop.set()
            queued = [f for f, m in pending.items() if m.dirname not in started]
            client.cancel(queued, force=True)
            for f in queued:
                on_event({"event": "cancelled", "run": pending.pop(f).dirname})
            deadline = time.monotonic() + STOP_GRACE_SECONDS
        for future in [f for f in pending if f.done()]:
            failure = _finish(future, pending.pop(future), place, on_event)
            if failure:
                failed.append(failure)
        time.sleep(POLL_SECONDS)
    if stopped:
        raise Interrupted(stopped, 0, 0)
    return failed


def _finish(future: Any, member: Member, place: Place,
            on_event: Callable[[Event], None]) -> dict[str, Any] | None:
    """A finished task: its run written into the group (or its failure returned)."""
    run = member.dirname
    try:
        result = future.result()
    except Exception as e:  # KilledWorker after the scheduler's retries, a lost scheduler
        result = {"state": "failed", "worker": None,
                  "message": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    if result["state"] == "failed":
        on_event({"event": "failed", "run": run, "worker": result["worker"],
                  "message": result["message"]})
        return {"run": run, "worker": result["worker"], "message": result["message"]}
    write_run_dir(place.group / run, result["files"])
    if result["state"] == "interrupted":
        on_event({"event": "stopped", "run": run, "worker": result["worker"]})
        return None
    info = read_run(place.group / run)
    message = {"message": info.metrics["message"]} if info.state == "diverged" else {}
    on_event({"event": "done", "run": run, "state": info.state, "worker": result["worker"],
              "test_accuracy": info.test_accuracy, "seconds": info.seconds} | message)
    return None
