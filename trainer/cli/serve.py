"""`trainer serve` (a local page to draw digits, with the model's answer, its confusion matrix
and history) and `trainer export` (the model as ONNX). Their extras are imported only here."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import threading
import webbrowser
from pathlib import Path
from typing import Annotated

from trainer.cli.console import cli_errors, console, err_console, shown
from trainer.cli.options import BackendOpt, DataDirOpt, DeviceOpt, Opt, RunArg
from trainer.errors import UsageError
from trainer.fileio import check_writable
from trainer.run.catalog import resolve_run
from trainer.run.train import load_backend
from trainer.serve import require

# Ctrl-C waits this long for requests in flight (a client that never finishes sending one would
# hold the server forever), then stops them
GRACE_SECONDS = 3


def serve_cmd(
    run: RunArg,
    host: Annotated[str, Opt(help="address to listen on; anything but a loopback address "
                                  "lets other machines use the model")] = "127.0.0.1",
    port: Annotated[int, Opt(min=0, max=65535, help="port (0: any free one)")] = 8000,
    open_browser: Annotated[bool, Opt("--open", help="open the page in a web browser")] = False,
    backend: BackendOpt = "numpy",
    device: DeviceOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Serve a page to draw digits and watch the model answer: the 28x28 image it sees, its
    ten probabilities, the run's history and confusion matrix, with the test images behind
    each cell. Also a JSON API (/api/predict, /api/model, /api/confusion, /api/history)."""
    with cli_errors():
        require("serve", "starlette", "uvicorn", "python_multipart")
        import uvicorn

        from trainer.serve.app import create_app
        from trainer.serve.service import Service

        run_dir = resolve_run(run)
        sock = _bind(host, port)  # first: a busy port is said before the data is read
        service = Service(run_dir, load_backend(backend, device), data_dir)
        url = f"http://{_url_host(host)}:{sock.getsockname()[1]}/"
        if not _loopback(host):
            err_console.print(f"[bold yellow]warning:[/] listening on {shown(host)}, not on "
                              f"127.0.0.1: anyone who can reach this machine can use the model "
                              f"and see its test images", soft_wrap=True)
        if service.cells is None:
            err_console.print(f"[yellow]note:[/] no test images behind the confusion matrix: "
                              f"{shown(service.cells_missing)}", soft_wrap=True)
        console.print(f"Serving {shown(service.model.config.describe())} from "
                      f"{shown(str(run_dir))} at {url}  (Ctrl-C stops)", soft_wrap=True)
        server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning",
                                               access_log=False, server_header=False,
                                               timeout_graceful_shutdown=GRACE_SECONDS))
        if open_browser:
            threading.Timer(0.5, webbrowser.open, [url]).start()
        server.run(sockets=[sock])
        if server.should_exit:  # stopped by a signal, which uvicorn raises again on its way
            # out; a process that inherited SIGINT ignored (a background job of a script)
            # would ignore that: Ctrl-C ends with 130 either way
            raise KeyboardInterrupt


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port or a bad host is a clear message."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r}: not an address of this machine ({e.strerror})"
                         ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is in use: choose another with --port "
                             f"(0 picks a free one)") from None
        raise UsageError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _url_host(host: str) -> str:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


def export_cmd(
    run: RunArg,
    format: Annotated[str, Opt("--format", help="the file format: onnx")] = "onnx",
    out: Annotated[Path | None, Opt(help="the file to write (default: model.onnx in the "
                                         "run's directory)")]
    = None,
    force: Annotated[bool, Opt("--force", help="replace an existing --out that trainer export "
                                               "did not write (never a run's own files)")]
    = False,
) -> None:
    """Export a run's model for other runtimes: ONNX, from raw pixels (0..255) with the run's
    input scaling, every layer and the softmax, to class probabilities."""
    with cli_errors():
        if format != "onnx":
            raise UsageError(f"--format must be onnx, got {format!r:.40}")
        require("onnx", "onnx")
        from trainer.serve.export import check_out, export_onnx

        run_dir = resolve_run(run)
        out = out if out is not None else run_dir / "model.onnx"
        if run_dir.is_dir():
            check_out(out, force)
            check_writable(out, "--out")
        path = export_onnx(run_dir, out, force)
        console.print(f"Wrote {shown(str(path))} ({path.stat().st_size / 1024:.0f} KB): input "
                      f"'pixels' (batch, pixels) gray levels 0..255, output 'probabilities'",
                      soft_wrap=True)
