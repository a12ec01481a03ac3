"""Load benchmark of `trainer serve`: C concurrent clients send N predictions to 127.0.0.1.

Starts `python -m trainer serve RUN_DIR --port 0` as a user would, then C clients (asyncio,
one keep-alive HTTP/1.1 connection each, a deliberately lean client so that the machine's
cores go to the server) POST MNIST test digits as JSON pixels to /api/predict. Reports
predictions per second, p50/p99/max latency, errors (non-200 replies, broken connections),
answers that differ from the label, the server's peak RSS (VmHWM) and the CPU seconds the
server and the clients used, which tells what limits the rate.

    python scripts/bench_serve.py RUN_DIR [--clients 16] [--requests 2000] [--canvas]

Without RUN_DIR a run is trained first (default config, 1 epoch). --canvas sends 140x140
drawings (as the page does) instead of 28x28 digits. Run it under the shared lock, with
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset in the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trainer.data.dataset import load_dataset


def start_server(run_dir: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "serve", str(run_dir), "--port",
                             "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not found:
        proc.kill()
        sys.exit(f"the server did not start: {line!r} {proc.stderr.read()}")
    return proc, int(found.group(1))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def client(port: int, bodies: list[bytes], labels: list[str], todo: list[int],
                 latencies: list[float], outcome: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while todo:
            i = todo.pop()
            body = bodies[i % len(bodies)]
            start = time.perf_counter()
            writer.write(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                reply = await reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError, AttributeError):
                outcome["errors"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                outcome["errors"] += 1
            elif json.loads(reply)["prediction"] != labels[i % len(labels)]:
                outcome["wrong"] += 1
    finally:
        writer.close()


async def load(port: int, bodies: list[bytes], labels: list[str], clients: int,
               requests: int) -> tuple[list[float], dict[str, int], float]:
    todo = list(range(requests))[::-1]
    latencies: list[float] = []
    outcome = {"errors": 0, "wrong": 0}
    start = time.perf_counter()
    await asyncio.gather(*(client(port, bodies, labels, todo, latencies, outcome)
                           for _ in range(clients)))
    return latencies, outcome, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--canvas", action="store_true",
                        help="send 140x140 drawings, as the page does")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    data = load_dataset(fetch=False)
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "run"
        subprocess.run([sys.executable, "-m", "trainer", "train", "--epochs", "1", "--quiet",
                        "--run-dir", str(run_dir)], check=True, stdout=subprocess.DEVNULL)
    digits = data.test_images[:500]
    if args.canvas:
        digits = np.kron(digits, np.ones((1, 5, 5), dtype=np.uint8))
    side = digits.shape[1]
    bodies = [json.dumps({"pixels": d.ravel().tolist(), "width": side, "height": side})
              .encode() for d in digits]
    labels = [str(y) for y in data.test_labels[:500]]

    proc, port = start_server(run_dir)
    try:
        asyncio.run(load(port, bodies, labels, args.clients, args.warmup))
        server_cpu, own = cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_SELF)
        latencies, outcome, wall = asyncio.run(load(port, bodies, labels, args.clients,
                                                    args.requests))
        server_cpu = cpu_seconds(proc.pid) - server_cpu
        after = resource.getrusage(resource.RUSAGE_SELF)
        client_cpu = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    ms = np.array(latencies) * 1000
    result = {
        "requests": args.requests, "clients": args.clients,
        "payload": f"{side}x{side} JSON pixels ({np.mean([len(b) for b in bodies]) / 1024:.1f} KB)",
        "predictions_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "errors": outcome["errors"], "answers_not_the_label": outcome["wrong"],
        "server_peak_rss_mb": round(rss, 1),
        "server_cpu_per_request_ms": round(1000 * server_cpu / args.requests, 3),
        "server_cpu_share": round(server_cpu / wall, 2),  # 1.0: one core busy all the time
        "client_cpu_share": round(client_cpu / wall, 2),
        "cores": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
