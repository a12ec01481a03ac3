"""The benchmark runs end to end on a tiny subset, so it never rots (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_bench_script_writes_a_table_and_json(mnist, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "bench", "--batch-sizes", "32,128",
         "--backends", "numpy,array-api-strict", "--limit-train", "1000", "--epochs", "1",
         "--warmup", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    rows = {(r["batch_size"], r["target"]): r for r in report["results"]}
    assert set(rows) == {(32, "numpy"), (128, "numpy"), (32, "array-api-strict"),
                         (128, "array-api-strict")}
    for row in rows.values():
        assert row["train_samples"] == 1000  # what the worker trained on: --limit-train
        assert row["seconds"] > 0
        assert row["samples_per_s"] == pytest.approx(row["train_samples"] / row["seconds"])
        assert row["peak_rss_mb"] > 0
    for bs in (32, 128):  # each target's time over the first target's (numpy) at that batch
        ours, strict = rows[(bs, "numpy")], rows[(bs, "array-api-strict")]
        assert strict["vs_ours"] == pytest.approx(strict["seconds"] / ours["seconds"])
    assert rows[(32, "numpy")]["threads"] == 1  # small GEMMs: one BLAS thread
    for row in rows.values():  # our backends train the same seeded run: the same loss
        assert 0 < row["loss"] == pytest.approx(rows[(row["batch_size"], "numpy")]["loss"],
                                                rel=1e-4)
        assert row["diverged"] is False and row["not_learning"] is False
    assert "numpy" in proc.stdout and "array-api-strict" in proc.stdout
    for bs in (32, 128):  # what to pick: the faster of the two at each batch size
        pick = min(("numpy", "array-api-strict"), key=lambda t: rows[(bs, t)]["seconds"])
        assert report["fastest"][str(bs)] == pick
        fastest_line = next(x for x in proc.stdout.splitlines() if "Fastest" in x)
        assert f"{bs} ({rows[(bs, pick)]['seconds']:.3f} s)" in fastest_line
        assert fastest_line.count(f"{pick} at batch") == 1  # each backend named once
        for row in (rows[(bs, "numpy")], rows[(bs, "array-api-strict")]):
            assert row["first_epoch"] > 0  # --warmup 0: the first timed epoch
    flat = " ".join(proc.stdout.split())
    assert "Fastest of ours here: " in flat
    cpu = report["machine"]["cpu"]
    assert f"CPU: {cpu['model']}, {cpu['cores']} cores, {cpu['simd']}" in flat
    assert f"numpy {np.__version__}" in flat and "array_api_strict" in report["versions"]
    assert "diverged" not in proc.stdout and "does not learn" not in proc.stdout


def test_bench_refuses_bad_batch_sizes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainer.cli.app import app

    result = CliRunner().invoke(app, ["bench", "--batch-sizes", "32,zero", "--out",
                                      str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "--batch-sizes" in result.output
    assert not (tmp_path / "b.json").exists()


def test_bench_refuses_a_batch_larger_than_the_training_set(mnist, tmp_path: Path,
                                                            monkeypatch) -> None:
    """A batch of 100,000 on 2,000 images is the whole set: its row was once named the
    fastest "at batch 100000". Refused before anything is timed."""
    from typer.testing import CliRunner

    from trainer.cli import bench as cli_bench
    from trainer.cli.app import app

    monkeypatch.setattr(cli_bench, "run_bench", lambda *a, **k: pytest.fail("timed"))
    args = ["bench", "--backends", "numpy", "--out", str(tmp_path / "b.json")]
    for sizes, limit, images, where in (("32,100000", "2000", "2,000", "--limit-train"),
                                        ("60001", None, "60,000", "mnist")):
        result = CliRunner().invoke(app, [*args, "--batch-sizes", sizes,
                                          *(["--limit-train", limit] if limit else [])])
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert f"more than the {images} training images ({where})" in message
        assert sizes.split(",")[-1] in message and not (tmp_path / "b.json").exists()


def test_judge_uses_the_loops_divergence_and_an_untrained_networks_loss() -> None:
    import math

    from trainer.bench.run import judge
    from trainer.core.config import default_config
    from trainer.core.losses import DIVERGED_NATS

    ce = default_config()  # 10 classes, cross-entropy: an untrained network scores ln 10
    untrained = 2 * math.log(10)  # not learning: over twice that
    assert judge(ce, 0.3) == {"diverged": False, "not_learning": False}
    assert judge(ce, untrained - 1e-9)["not_learning"] is False
    assert judge(ce, untrained + 1e-9) == {"diverged": False, "not_learning": True}
    assert judge(ce, DIVERGED_NATS + 1) == {"diverged": True, "not_learning": True}
    for bad in (float("nan"), float("inf")):
        assert judge(ce, bad) == {"diverged": True, "not_learning": True}
    assert judge(ce, None) == {"diverged": False, "not_learning": False}  # a peer: no loss
    mse = ce.replace(loss="mse")  # no scale to judge by: only a non-finite loss
    assert judge(mse, 0.9) == {"diverged": False, "not_learning": False}
    assert judge(mse, float("nan"))["diverged"] is True


def test_bench_table_flags_a_diverged_batch_size(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from trainer.cli import bench as cli_bench
    from trainer.cli.app import app

    def fake_run_bench(cfg, *, batch_sizes, targets, on_result, **_):
        rows = [{"target": "numpy", "batch_size": bs, "seconds": 0.2, "first_epoch": 0.3,
                 "samples_per_s": 3e5,
                 "peak_rss_mb": 300, "threads": None, "vs_ours": 1.0,
                 "loss": {512: 0.3, 1024: 57.9, 4096: None}[bs],  # None: not finite
                 "not_learning": bs >= 1024, "diverged": bs == 4096}
                for bs in batch_sizes]
        for row in rows:
            on_result(row)
        return {"results": rows, "fastest": {512: "numpy"}, "versions": {"numpy": "2.4.6"},
                "machine": {"cpu": {"model": "AMD EPYC 7B13", "cores": 2, "simd": "AVX2"}}}

    monkeypatch.setattr(cli_bench, "run_bench", fake_run_bench)
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", "--batch-sizes", "512,1024,4096", "--backends",
                                      "numpy", "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "57.9" in result.output and "0.3" in result.output
    assert "not finite" in result.output
    flat = " ".join(result.output.split())
    assert "At batch 4096 training diverged" in flat
    assert "At batch 1024, 4096 the network does not learn" in flat
    assert "over twice an untrained network's (4.61)" in flat
    assert "CPU: AMD EPYC 7B13, 2 cores, AVX2" in flat and "Versions: numpy 2.4.6" in flat
    assert "Fastest of ours here: numpy at batch 512 (0.200 s)" in flat
    assert f"Wrote the JSON report to {out.resolve()}" in flat
    assert "1st s: the first epoch, compiling included" in flat  # the legend
    assert json.loads(out.read_text())["results"][1]["loss"] == 57.9


def test_fastest_skips_peers_and_runs_that_did_not_train() -> None:
    from trainer.bench.run import fastest

    rows = [{"target": "numpy", "batch_size": 32, "seconds": 0.40},
            {"target": "jax", "batch_size": 32, "seconds": 0.35},
            {"target": "peer:jax-scan", "batch_size": 32, "seconds": 0.30},
            {"target": "numpy", "batch_size": 4096, "seconds": 0.19, "not_learning": True},
            {"target": "jax", "batch_size": 4096, "seconds": 0.25},
            {"target": "torch", "batch_size": 512, "seconds": 0.1, "diverged": True},
            {"target": "torch", "batch_size": 128, "error": "failed"}]
    assert fastest(rows) == {32: "jax", 4096: "jax"}


@pytest.mark.parametrize(("flags", "simd"), [
    ("flags : fpu sse2 avx avx2 fma avx512f avx512dq", "AVX-512"),
    ("flags : fpu sse2 avx avx2 fma", "AVX2"),
    ("Features : fp asimd evtstrm", "neither AVX2 nor AVX-512"),
])
def test_cpu_reads_the_model_and_vector_width(tmp_path: Path, flags: str, simd: str) -> None:
    from trainer.bench.run import cpu

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor : 0\nmodel name : AMD EPYC 7B13\n{flags}\n\nprocessor : 1\n"
                    f"model name : AMD EPYC 7B13\nflags : fpu\n")
    got = cpu(str(info))
    assert got["model"] == ("AMD EPYC 7B13") and got["simd"] == simd
    assert cpu(str(tmp_path / "none"))["simd"] == "unknown"


def fake_worker(seconds: dict[str, float], calls: list[str]):
    """A stand-in for the worker subprocess: each target's figures, no training."""
    def run(spec, keep_blas_env):
        calls.append(spec["target"])
        if spec["target"] not in seconds:
            return {"error": "InductorError: CppCompileError: C++ compile error [g++]"}
        t = seconds[spec["target"]]
        return {"times": [t], "first_epoch": t, "peak_rss_mb": 100.0, "train_samples": 1000,
                "loss": 0.5}
    return run


def test_peers_that_cannot_express_a_config_get_a_row_that_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An MSE network with a sigmoid output: no peer but the GEMM floor trains it, and each
    says so in the table and the JSON, without a worker started; a peer whose worker failed
    (torch.compile) has its row with the reason."""
    from typer.testing import CliRunner

    from trainer.bench import run as bench_run
    from trainer.cli.app import app

    cfg = tmp_path / "mse.json"
    cfg.write_text(json.dumps({"layers": [{"nodes": 784, "activation": "relu"},
                                          {"nodes": 32, "activation": "sigmoid"},
                                          {"nodes": 10}],
                               "learning_rate": 0.1, "epochs": 1, "batch_size": 32,
                               "loss": "mse"}))
    calls: list[str] = []
    monkeypatch.setattr(bench_run, "_run_worker", fake_worker(
        {"numpy": 1.0, "peer:gemm-floor": 0.3}, calls))
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", str(cfg), "--peers", "--backends", "numpy",
                                      "--batch-sizes", "128", "--out", str(out)],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = {r["target"]: r for r in json.loads(out.read_text())["results"]}
    why = "a sigmoid output with the mse loss (only a softmax output with cross-entropy)"
    flat = " ".join(result.output.split())
    for peer in ("torch", "jax-step", "jax-scan", "torch-compile"):
        assert rows[f"peer:{peer}"]["cannot"] == why and f"peer:{peer}" not in calls
        assert f"peer:{peer}: can't express: {why}" in flat
    assert calls == ["numpy", "peer:gemm-floor"] and rows["peer:gemm-floor"]["seconds"] == 0.3
    assert "Fastest at batch 128: numpy (1.000 s)" in flat  # the floor is not a trainer

    default = tmp_path / "default.json"  # every peer can: the failed one's row says why
    calls.clear()
    monkeypatch.setattr(bench_run, "_run_worker", fake_worker(
        {"numpy": 1.0, "peer:torch": 2.0, "peer:jax-step": 0.9, "peer:jax-scan": 0.8,
         "peer:sklearn": 1.9, "peer:gemm-floor": 0.3}, calls))
    result = CliRunner().invoke(app, ["bench", "--peers", "--backends", "numpy",
                                      "--batch-sizes", "128", "--out", str(default)],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert ("peer:torch-compile: failed: InductorError: CppCompileError: C++ compile error "
            "[g++]") in flat
    assert "Fastest at batch 128: peer:jax-scan (0.800 s); ours: numpy 1.25x it" in flat
    report = json.loads(default.read_text())
    assert report["fastest_overall"]["128"] == {
        "target": "peer:jax-scan", "seconds": 0.8, "fastest_peer": "peer:jax-scan",
        "peer_seconds": 0.8, "ours": "numpy", "ours_vs_peer": 1.25}
    assert {r["target"] for r in report["results"]} >= {"peer:torch-compile", "peer:torch"}


def test_the_last_line_names_ours_when_ours_is_fastest() -> None:
    from trainer.bench.run import fastest_overall
    from trainer.cli.bench import summary

    rows = [{"target": "numba", "batch_size": 128, "seconds": 0.5},
            {"target": "numpy", "batch_size": 128, "seconds": 0.9},
            {"target": "peer:jax-scan", "batch_size": 128, "seconds": 0.8},
            {"target": "peer:torch", "batch_size": 128, "seconds": 0.1, "diverged": True},
            {"target": "peer:gemm-floor", "batch_size": 128, "seconds": 0.2},
            {"target": "peer:sklearn", "batch_size": 128, "cannot": "dropout"}]
    report = {"machine": {"cpu": {"model": "EPYC", "cores": 2, "simd": "AVX2"}},
              "versions": {}, "fastest": {128: "numba"}, "fastest_overall": fastest_overall(rows),
              "results": rows}
    assert summary(report)[-1] == ("Fastest at batch 128: numba (0.500 s); ours: numba 0.62x "
                                   "the fastest peer, peer:jax-scan (0.800 s)")


@pytest.mark.slow
def test_bench_times_the_peers_on_the_recipe(mnist, tmp_path: Path) -> None:
    """A real (tiny) `bench --peers` of configs/mnist-99.3.json: the torch and jax peers train
    its features on the images ours train on; scikit-learn's row says what it cannot express;
    the last line names the fastest row."""
    import importlib.util

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "bench", "configs/mnist-99.3.json", "--peers",
         "--backends", "numpy", "--batch-sizes", "128", "--limit-train", "300", "--epochs",
         "1", "--warmup", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["target"]: r for r in json.loads(out.read_text())["results"]}
    for target in ("numpy", "peer:torch", "peer:jax-step", "peer:jax-scan", "peer:gemm-floor"):
        assert rows[target]["train_samples"] == 300 and rows[target]["seconds"] > 0, target
    for target in ("peer:torch", "peer:jax-step", "peer:jax-scan"):  # they learn, as ours
        assert 0 < rows[target]["loss"] < rows["numpy"]["loss"] + 0.5, rows[target]
        assert rows[target]["not_learning"] is False and rows[target]["diverged"] is False
    compiled = rows["peer:torch-compile"]  # a row either way: timed, or why it failed
    assert compiled.get("seconds") or ("peer:torch-compile: failed:" in proc.stdout
                                       and compiled["error"])
    if importlib.util.find_spec("sklearn"):
        assert rows["peer:sklearn"]["cannot"].startswith("dropout; a cosine schedule")
        assert "peer:sklearn: can't express: dropout" in proc.stdout
    fastest = next(x for x in proc.stdout.splitlines() if x.startswith("Fastest at batch 128"))
    best = min((r for t, r in rows.items() if r.get("seconds") and t != "peer:gemm-floor"),
               key=lambda r: r["seconds"])
    assert f"Fastest at batch 128: {best['target']} ({best['seconds']:.3f} s)" in fastest
