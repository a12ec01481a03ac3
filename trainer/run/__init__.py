"""One training run: loop, checkpoints, results, run directories, inference, plots."""
