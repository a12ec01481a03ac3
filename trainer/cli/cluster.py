"""`--cluster ADDRESS`: its options, its warning, and the live table of a batch's runs on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from trainer.batch import Cluster, Event
from trainer.batch.connect import SCHEDULER_ENV, check_address, exposed
from trainer.cli.console import err_console, shown
from trainer.cli.options import Opt
from trainer.errors import UsageError

ClusterOpt = Annotated[str | None, Opt(
    "--cluster", metavar="ADDRESS", help=f"run on a Dask cluster: its scheduler, "
                                        f"tcp://HOST:PORT or tls://HOST:PORT (default: "
                                        f"${SCHEDULER_ENV}; a single run never)")]
ShipDataOpt = Annotated[bool, Opt("--ship-data", help="with --cluster: send the data through the "
                                                      "cluster (workers without a copy)")]
TlsCaOpt = Annotated[Path | None, Opt("--tls-ca", help="with tls://: the CA certificate (PEM)")]
TlsCertOpt = Annotated[Path | None, Opt("--tls-cert", help="with tls://: this client's "
                                                           "certificate (PEM)")]
TlsKeyOpt = Annotated[Path | None, Opt("--tls-key", help="with tls://: this client's key (PEM)")]


def cluster_option(address: str | None, ship_data: bool, tls_ca: Path | None,
                   tls_cert: Path | None, tls_key: Path | None, batch: bool) -> Cluster | None:
    """The Cluster the options name (a batch: also $DASK_SCHEDULER_ADDRESS), or None; warns
    on stderr when the scheduler is neither on loopback nor behind TLS."""
    if address is None and batch:
        address = os.environ.get(SCHEDULER_ENV) or None
    tls = {"--tls-ca": tls_ca, "--tls-cert": tls_cert, "--tls-key": tls_key}
    if address is None:
        given = [name for name, v in {"--ship-data": ship_data, **tls}.items() if v]
        if given:
            raise UsageError(f"{given[0]} goes with --cluster ADDRESS")
        return None
    if not batch:
        raise UsageError("--cluster runs a batch: give several configs or --seeds (one run: "
                         "--seeds 7, trains seed 7)")
    address = check_address(address)
    if exposed(address):
        err_console.print(f"[yellow]warning:[/] the scheduler {shown(address)} is neither on "
                          f"loopback nor tls://: whoever reaches it can run code on every "
                          f"worker; use tls:// with certificates", soft_wrap=True)
    return Cluster(address, tls_ca, tls_cert, tls_key, ship_data)


class RunTable:
    """The runs of a batch on a cluster, a row each: queued, running on which worker (at which
    epoch), finished with its test accuracy, or failed with why. `on_event` feeds it."""

    def __init__(self, console: Console) -> None:
        self.rows: dict[str, dict[str, str]] = {}
        self.live = Live(self, console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> RunTable:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def on_event(self, event: Event) -> None:
        row = self.rows.setdefault(event["run"], {"state": "queued", "worker": "", "note": ""})
        kind = event["event"]
        if event.get("worker"):
            row["worker"] = event["worker"]
        if kind == "start":
            row["state"] = "running"
            row["note"] = f"from epoch {event['resume_epoch']}" if event["resume_epoch"] else ""
        elif kind == "epoch":
            row["note"] = f"epoch {event['stats']['epoch']}/{event['epochs']}"
        elif kind in ("done", "kept"):
            row["state"] = event["state"] + (" (kept)" if kind == "kept" else "")
            accuracy = event.get("test_accuracy")
            row["note"] = event.get("message") or (f"{accuracy:.2%}" if accuracy is not None
                                                   else "")
        elif kind in ("failed", "cancelled", "stopped"):
            row["state"], row["note"] = kind, event.get("message", "")

    def __rich__(self) -> Table:
        table = Table(title="Runs", title_justify="left")
        for column in ("run", "state", "worker", "epoch, accuracy or why"):
            table.add_column(column, overflow="fold")
        for run, row in self.rows.items():
            style = {"failed": "red", "running": "cyan"}.get(row["state"].split()[0], "")
            table.add_row(shown(run), f"[{style}]{row['state']}[/]" if style else row["state"],
                          shown(row["worker"]), shown(row["note"]))
        return table
