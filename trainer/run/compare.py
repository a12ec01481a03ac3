"""Runs side by side: the config keys that differ, the final figures, per-class F1."""

from __future__ import annotations

from typing import Any

from trainer.run.catalog import RunInfo

Rows = list[tuple[str, list[Any]]]  # (key, one value per run)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A config as `key: value` pairs, nested keys spelled as in sweep spaces:
    `layers[1].nodes`, `lr_schedule.type`."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out |= flatten(item, f"{prefix}[{i}]")
        return out
    return {prefix: value}


def config_differences(runs: list[RunInfo]) -> Rows:
    """Every config key whose value is not the same in all the runs (None: absent), in the
    order of the first run's config."""
    flat = [flatten(r.config) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [(k, [f.get(k) for f in flat]) for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


METRICS = ("state", "backend", "epochs", "best_epoch", "train_samples", "test_samples",
           "train_accuracy", "test_accuracy", "macro_f1", "weighted_f1", "seconds")


def metric_rows(runs: list[RunInfo]) -> Rows:
    """The final figures of each run (None where a run has none: interrupted, diverged)."""
    def value(r: RunInfo, key: str) -> Any:
        m = r.metrics
        return {"state": r.state, "backend": r.backend, "epochs": r.epochs_done,
                "best_epoch": m.get("best_epoch"), "train_samples": m.get("train_samples"),
                "test_samples": m.get("test_samples"),
                "train_accuracy": _num(m.get("train_accuracy")),
                "test_accuracy": r.test_accuracy, "seconds": r.seconds,
                "macro_f1": _f1(m.get("macro_avg")), "weighted_f1": _f1(m.get("weighted_avg")),
                }[key]
    return [(key, [value(r, key) for r in runs]) for key in METRICS]


def per_class_f1(runs: list[RunInfo]) -> Rows:
    """Each class's F1 in each run (None where the run has no test report)."""
    tables = [r.metrics.get("per_class") if isinstance(r.metrics.get("per_class"), dict) else {}
              for r in runs]
    classes = list(dict.fromkeys(str(c) for t in tables for c in t))
    return [(c, [_f1(t.get(c)) for t in tables]) for c in classes]


def _f1(entry: Any) -> float | None:
    return _num(entry.get("f1")) if isinstance(entry, dict) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None
