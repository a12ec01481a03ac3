"""Reaching a Dask scheduler: its address checked, a probe, the client (TLS from Dask's
Security), and the workers checked (same trainer code and libraries; a GPU where wanted)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import UsageError, install_hint

from .remote import worker_versions

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_TIMEOUT_SECONDS = 5  # an unreachable scheduler: exit 2 well within 10 s
ADDRESS = re.compile(r"(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
                     r":(?P<port>\d{1,5})")
INSTALL = install_hint("cluster")


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
