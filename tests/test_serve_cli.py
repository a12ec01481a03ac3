"""`trainer serve` and `trainer export` as commands: run as a user runs them (subprocesses),
they bind where told, warn off loopback, refuse what they cannot do with exit 2 and one line,
and work (or say which pip command is missing) without their optional extras."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from typer.testing import CliRunner

from trainer.cli.app import app

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def trainer(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def test_a_busy_port_is_a_clear_error(mnist_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = trainer("serve", str(mnist_run), "--port", str(port))
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "no-such-host.invalid"], "not an address of this machine"),
    (["--port", "70000"], "less than or equal to 65535"),
])
def test_bad_host_or_port(mnist_run, args, message):
    result = CliRunner().invoke(app, ["serve", str(mnist_run), *args])
    assert result.exit_code == 2 and message in result.output


def test_a_missing_run_is_refused_before_serving(tmp_path):
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "none")])
    assert result.exit_code == 2 and "is not a run directory" in result.output


def test_listening_beyond_loopback_says_so(mnist_run):
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "serve", str(mnist_run),
                             "--host", "0.0.0.0", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        warning = proc.stderr.readline()
        served = proc.stdout.readline()
        port = int(served.rsplit(":", 1)[1].split("/")[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=10) as r:
            assert json.load(r)["network"].startswith("784 -> 128")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert "warning: listening on 0.0.0.0, not on 127.0.0.1" in warning
    assert "anyone who can reach this machine" in warning
    assert proc.returncode == 130


def test_ctrl_c_exits_130_even_where_sigint_was_inherited_ignored(mnist_run):
    """A background job of a script starts with SIGINT ignored; uvicorn still stops on it, and
    the command still says so with 130 (it used to exit 0)."""
    # ignored, then exec: the disposition survives it (no preexec_fn: this process has threads)
    ignoring = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "os.execv(sys.executable, [sys.executable, '-m', 'trainer', *sys.argv[1:]])")
    proc = subprocess.Popen([sys.executable, "-c", ignoring, "serve", str(mnist_run),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        served = proc.stdout.readline()
        port = int(served.rsplit(":", 1)[1].split("/")[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=10) as r:
            assert r.status == 200  # serving: its signal handlers are in place
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in proc.stderr.read()


def test_ctrl_c_stops_the_server_while_a_client_holds_a_request_open(mnist_run):
    """A client that never finishes sending its request does not hold the server: Ctrl-C
    waits GRACE_SECONDS for it, then stops, with 130."""
    import http.client
    import time

    from trainer.cli.serve import GRACE_SECONDS

    proc = subprocess.Popen([sys.executable, "-m", "trainer", "serve", str(mnist_run),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1].split("/")[0])
        stuck = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stuck.putrequest("POST", "/api/predict")
        stuck.putheader("Content-Length", "100000")
        stuck.endheaders()
        stuck.send(b'{"pixels": [')  # and nothing more
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=GRACE_SECONDS + 15)
        waited = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert waited < GRACE_SECONDS + 5
    assert "Traceback" not in proc.stderr.read()


def without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    """Python with `modules` unimportable (as if their extra were not installed)."""
    prelude = f"import sys\nfor m in {modules!r}: sys.modules[m] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          timeout=60, env=ENV)


def test_trainer_works_without_the_serve_and_onnx_extras(mnist_run):
    blocked = ["starlette", "uvicorn", "onnx", "onnxruntime", "multipart", "python_multipart"]
    imports = without(blocked, "import trainer, trainer.cli.app, trainer.serve\n"
                               "from trainer.cli.app import main\n"
                               "sys.argv = ['trainer', '--help']\nmain()")
    assert imports.returncode == 0, imports.stderr
    assert "serve" in imports.stdout and "export" in imports.stdout
    for command, extra in (("serve", "serve"), ("export", "onnx")):
        result = without(blocked, "from trainer.cli.app import main\n"
                                  f"sys.argv = ['trainer', {command!r}, {str(mnist_run)!r}]\n"
                                  "main()")
        assert result.returncode == 2, result.stderr
        assert f'python -m pip install ".[{extra}]" in the trainer checkout' in result.stderr
        assert "Traceback" not in result.stderr


def test_serve_and_export_of_a_run_without_a_model_say_why(idx_dir, tmp_path) -> None:
    """A diverged run: where it diverged and what to try, not "was the run finished?"; an
    interrupted one: how to resume it."""
    from typer.testing import CliRunner

    from trainer.cli.app import app

    runner = CliRunner()
    hot = tmp_path / "hot"
    trained = runner.invoke(app, ["train", "--data-dir", str(idx_dir), "--run-dir", str(hot),
                                  "--learning-rate", "1e6", "--epochs", "2", "-q"])
    assert trained.exit_code == 1, trained.output
    for command in (["serve", str(hot), "--port", "0"], ["export", str(hot)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert "the run diverged in epoch 1" in message and "smaller learning_rate" in message
        assert "was the run finished" not in message and "Traceback" not in result.output
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "config.json").write_text((hot / "config.json").read_text())
    (stopped / ".trainer-run").write_text("")
    result = runner.invoke(app, ["export", str(stopped)])
    assert result.exit_code == 2, result.output
    assert f"trainer train --resume {stopped}" in " ".join(result.output.split())
