"""The benchmark runs end to end on a tiny subset, so it never rots (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_bench_script_writes_a_table_and_json(mnist, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--batch-sizes", "32,128",
         "--backends", "numpy,array-api-strict", "--limit-train", "1000", "--epochs", "1",
         "--warmup", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
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
    assert "numpy" in proc.stdout and "array-api-strict" in proc.stdout


def test_bench_refuses_bad_batch_sizes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainer.cli import app

    result = CliRunner().invoke(app, ["bench", "--batch-sizes", "32,zero", "--out",
                                      str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "--batch-sizes" in result.output
    assert not (tmp_path / "b.json").exists()
