"""TensorBoard event files in the run directory's tensorboard/, written with tensorboardX (numpy
and protobuf: no TensorFlow, no torch). A batch's group directory or a sweep's directory is a
`tensorboard --logdir`: each run is one TensorBoard run, its config and final figures one row
of the HParams tab."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer.track.record import RunRecord, epoch_scalars

FOLDER = "tensorboard"


def _writer(logdir: Path) -> Any:
    from tensorboardX import SummaryWriter

    # flushed every few seconds by tensorboardX's own thread: adding a scalar is a queue put
    return SummaryWriter(logdir=str(logdir), flush_secs=5)


class TensorBoardRun:
    """One run's event file, written while it trains (`epoch`) and completed at its end
    (`finish`)."""

    def __init__(self, logdir: Path, samples: int | None = None) -> None:
        self.samples = samples  # images an epoch trains on: for samples_per_second
        self.writer = _writer(logdir)

    def epoch(self, row: dict[str, Any], walltime: float | None = None) -> None:
        for tag, value in epoch_scalars(row, self.samples).items():
            self.writer.add_scalar(tag, value, int(row["epoch"]), walltime=walltime)

    def finish(self, record: RunRecord) -> None:
        """The final figures as scalars and the config as this run's hparams session."""
        _hparams(self.writer, record)
        self.close()

    def close(self) -> None:
        self.writer.close()


def _hparams(writer: Any, record: RunRecord) -> None:
    from tensorboardX.summary import hparams

    final = record.final()
    step = int(record.history[-1]["epoch"]) if record.history else 0
    for tag, value in final.items():
        writer.add_scalar(tag, value, step)
    values = {k: v if isinstance(v, bool | int | float | str) else str(v)
              for k, v in record.params().items()}
    values["state"] = record.state
    # into this run's own event file (add_hparams would open a sub-run per call)
    for summary in hparams(values, final):
        writer.file_writer.add_summary(summary)


def write_tensorboard(record: RunRecord) -> Path:
    """The run's event file from its directory (for runs trained without --log tensorboard):
    written aside, then put in place of any tensorboard/ there was, so a second write
    replaces the first rather than doubling its curves."""
    target = record.path / FOLDER
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=record.path))
    try:
        run = TensorBoardRun(staging, record.samples)
        start = os.stat(record.path / "config.json").st_mtime
        for row in record.history:  # at the times the epochs ended, as near as the files say
            start += float(row.get("seconds") or 0.0)
            run.epoch(row, walltime=start)
        run.finish(record)
        old = None
        if target.exists():
            old = record.path / f".{FOLDER}-old-{time.time_ns()}"
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
