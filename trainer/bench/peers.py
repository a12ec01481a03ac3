"""The same network, hyper-parameters and data in other libraries, for `trainer bench --peers`.

What the peers express. PyTorch eager (`torch`), PyTorch under `torch.compile` on the CPU
(`torch-compile`), a jitted JAX step per batch (`jax-step`) and a whole JAX epoch as one
`lax.scan` (`jax-scan`) train, from the project's own initial weights (network.init_params):
per-layer hidden activations (sigmoid, tanh, relu, leaky_relu with activations.LEAKY_SLOPE,
identity), a softmax output with cross-entropy; inverted dropout where the config puts it
(dropouts[i] on the input of connection i), with the library's own masks (torch.nn.Dropout,
jax.random); SGD with momentum or Nesterov's, Adam and AdamW; L1/L2 on the weights only, added
to the summed loss and reduced with it (as the project's Rates.penalty scales it); a summed or
mean loss; the schedule's rate at every step (schedule.learning_rate); the batch size, the last
partial batch included. torch uses torch.optim, whose momentum keeps raw gradients: with a
changing rate its velocity is scaled by the current rate, not by each past step's (the same
update for a constant rate, the same work either way); JAX's update is written out with the
project's convention. scikit-learn's MLPClassifier expresses less (one hidden activation, no
dropout, no L1, no AdamW, no schedule, no augmentation). The GEMM floor is a bound, not a
trainer: only the forward and backward GEMMs at their real shapes.

A peer that cannot express a config is not run: its row says "can't express: <reasons>".

Augmentation is counted for everyone alike: every peer (the GEMM floor too) applies the
project's own shifts and elastic warps (augment.Shifter, elastic.ElasticWarp with the numba
backend's compiled `elastic` and `shift` kernels where numba loads, else NumPy's) on the host,
NumPy's BLAS on one thread (peer_feed.py says why), to each batch inside its timed loop, as our
numba backend does per batch; jax-scan
augments the epoch's rows on the host inside the timed epoch, then scans. These libraries are
optional: nothing is imported unless the peer runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from trainer.core.config import Config

HIDDEN = ("sigmoid", "tanh", "relu", "leaky_relu", "identity")  # torch's and jax's
SKLEARN_ACT = {"sigmoid": "logistic", "relu": "relu", "tanh": "tanh", "identity": "identity"}


@dataclass(frozen=True)
class PeerRun:
    """A peer's figures: the seconds of each epoch, the last epoch's mean training loss (None
    where the peer does not say)."""

    times: list[float]
    loss: float | None = None


@dataclass(frozen=True)
class Peer:
    library: str  # the module that must be installed
    module: str  # where its `train(config, feed, epochs) -> PeerRun` lives
    function: str
    kind: str  # "trainer" (torch, jax), "sklearn" or "floor": what cannot_express asks


PEERS: dict[str, Peer] = {
    "torch": Peer("torch", "trainer.bench.peer_torch", "eager", "trainer"),
    "torch-compile": Peer("torch", "trainer.bench.peer_torch", "compiled", "trainer"),
    "sklearn": Peer("sklearn", "trainer.bench.peer_other", "sklearn_sgd", "sklearn"),
    "jax-step": Peer("jax", "trainer.bench.peer_jax", "jax_step", "trainer"),
    "jax-scan": Peer("jax", "trainer.bench.peer_jax", "jax_scan", "trainer"),
    "gemm-floor": Peer("numpy", "trainer.bench.peer_other", "gemm_floor", "floor"),
}


def cannot_express(name: str, config: Config) -> str | None:
    """Why peer `name` cannot train `config` with its features ("; "-joined), or None."""
    kind = PEERS[name].kind
    if kind == "floor":
        return None
    sklearn = kind == "sklearn"
    why = _network_limits(config, set(SKLEARN_ACT) if sklearn else set(HIDDEN))
    if sklearn:
        why += _sklearn_limits(config)
    return "; ".join(why) or None


def _network_limits(config: Config, hidden: set[str]) -> list[str]:
    why = []
    acts = config.activations
    if acts[-1] != "softmax" or config.loss != "cross_entropy":
        why.append(f"a {acts[-1]} output with the {config.loss} loss (only a softmax output "
                   f"with cross-entropy)")
    other = sorted(set(acts[:-1]) - hidden)
    if other:
        why.append(f"hidden activation {', '.join(other)}")
    return why


def _sklearn_limits(config: Config) -> list[str]:
    why = []
    if len(set(config.activations[:-1])) > 1:
        why.append("a different activation per hidden layer")
    if any(config.dropouts):
        why.append("dropout")
    if config.regularization_type == "L1" and config.regularization_rate:
        why.append("an L1 penalty")
    if config.optimizer == "adamw":
        why.append("AdamW")
    s = config.lr_schedule
    if s.type != "constant" or s.warmup_epochs:
        why.append(f"a {s.type} schedule" + (" with warm-up" if s.warmup_epochs else ""))
    if config.augment.shift or config.augment.warps:
        why.append("augmentation (fit takes a fixed training set)")
    return why


def peers_that_cannot(targets: list[str], config: Config) -> dict[str, str]:
    """The peers among `targets` that cannot express `config`, with why."""
    found = {}
    for target in targets:
        why = cannot_express(target[5:], config) if target.startswith("peer:") else None
        if why:
            found[target] = why
    return found


def failure(e: BaseException) -> str:
    """A peer's exception in one line: its type and the first line of its message (a
    compiler's log below it, or a traceback's hint after it, would hide what failed)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def train_peer(name: str, config: Config, data: Any, epochs: int) -> PeerRun:
    """Train peer `name` on `data` (a Dataset: all of its training images) for `epochs`."""
    from trainer.bench.peer_feed import Feed

    why = cannot_express(name, config)
    if why:
        raise ValueError(f"peer {name} can't express this config: {why}")
    peer = PEERS[name]
    return getattr(importlib.import_module(peer.module), peer.function)(
        config, Feed.from_dataset(config, data), epochs)
