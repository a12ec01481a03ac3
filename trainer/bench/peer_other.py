"""scikit-learn's MLPClassifier and the GEMM floor (see peers.py)."""

from __future__ import annotations

import time
import warnings

import numpy as np

from trainer.bench.peer_feed import Feed
from trainer.bench.peers import SKLEARN_ACT, PeerRun
from trainer.core.config import Config


def sklearn_sgd(config: Config, feed: Feed, epochs: int) -> PeerRun:
    """MLPClassifier, one `fit` of one epoch at a time (peers.cannot_express turns away what it
    cannot train). It averages the gradient over the batch (and its L2 penalty, alpha, with
    it): for a summed loss its rate is multiplied by the batch size, and Adam's epsilon divided
    by it, to take the same step (the last, partial batch aside)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    c, bs = config, config.batch_size
    factor = bs if c.loss_reduction == "sum" else 1
    l2 = c.regularization_rate if c.regularization_type == "L2" else 0.0
    model = MLPClassifier(
        hidden_layer_sizes=tuple(c.sizes[1:-1]), activation=SKLEARN_ACT[c.activations[0]],
        solver="adam" if c.optimizer == "adam" else "sgd", batch_size=bs, alpha=l2,
        learning_rate_init=c.learning_rate * (factor if c.optimizer == "sgd" else 1),
        momentum=c.momentum, nesterovs_momentum=c.nesterov, beta_1=c.beta1, beta_2=c.beta2,
        epsilon=c.epsilon / factor, max_iter=1, shuffle=True, random_state=c.seed,
        warm_start=True, tol=0.0)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(feed.x, feed.y)
        times.append(time.perf_counter() - t0)
    return PeerRun(times)


def gemm_floor(config: Config, feed: Feed, epochs: int) -> PeerRun:
    """Only the GEMMs of forward and backward at their real shapes, in NumPy: a lower bound,
    plus the host augmentation every peer pays (peers.py)."""
    rng = np.random.default_rng(0)
    ws = [rng.random((a, b), dtype=np.float32).astype(config.dtype)
          for a, b in zip(config.sizes[:-1], config.sizes[1:], strict=True)]
    times = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        feed.begin(epoch)
        for s in range(feed.steps):
            outs = [feed.batch(s)[0]]
            for w in ws:
                outs.append(outs[-1] @ w)
            delta = outs[-1]
            for i in range(len(ws) - 1, -1, -1):
                _ = outs[i].T @ delta
                if i > 0:
                    delta = delta @ ws[i].T
        times.append(time.perf_counter() - t0)
    return PeerRun(times)
