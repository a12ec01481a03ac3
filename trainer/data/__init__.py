"""Datasets: IDX files, the MNIST fetch, the cache, digit images."""
