"""The PyTorch peers: eager, and the same model under `torch.compile` (see peers.py).

`build` makes the model and its optimizer from given initial weights and `make_step` one
training step, so that a test can run a step and compare it with the project's math."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from trainer.bench.peer_feed import Feed, initial_params
from trainer.bench.peers import PeerRun
from trainer.core.activations import LEAKY_SLOPE
from trainer.core.config import Config

ACTIVATION: dict[str, Callable[[], torch.nn.Module]] = {
    "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
    "leaky_relu": lambda: torch.nn.LeakyReLU(LEAKY_SLOPE), "identity": torch.nn.Identity}


def build(config: Config, params: Sequence[np.ndarray]
          ) -> tuple[torch.nn.Sequential, torch.optim.Optimizer]:
    """The network, with dropout before each connection whose input the config drops, its
    weights copied from `params` ([W0, b0, ...], W: fan_in x fan_out), and its optimizer."""
    dtype, acts, layers = getattr(torch, config.dtype), config.activations, []
    for i, act in enumerate(acts):
        if config.dropouts[i]:
            layers.append(torch.nn.Dropout(config.dropouts[i]))
        linear = torch.nn.Linear(config.sizes[i], config.sizes[i + 1], dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(params[2 * i].T)))
            linear.bias.copy_(torch.from_numpy(params[2 * i + 1]))
        layers.append(linear)
        if i < len(acts) - 1:  # the softmax output is in the cross-entropy
            layers.append(ACTIVATION[act]())
    model = torch.nn.Sequential(*layers)
    return model, optimizer(config, list(model.parameters()))


def optimizer(config: Config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    c = config
    if c.optimizer == "sgd":  # torch refuses Nesterov without momentum: then it is plain SGD
        return torch.optim.SGD(params, lr=c.learning_rate, momentum=c.momentum,
                               nesterov=c.nesterov and c.momentum > 0)
    kind = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=c.learning_rate, betas=(c.beta1, c.beta2), eps=c.epsilon,
                weight_decay=c.weight_decay if c.optimizer == "adamw" else 0.0)


def make_step(config: Config, model: torch.nn.Module, opt: torch.optim.Optimizer,
              forward: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """step(x, y, lr): one update at rate lr; returns the batch's summed cross-entropy (a
    tensor, not synchronised). `forward`: the model (default) or its compiled form."""
    forward = forward or model
    loss_fn = torch.nn.CrossEntropyLoss(reduction=config.loss_reduction)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    kind, rate = config.regularization_type, config.regularization_rate
    mean = config.loss_reduction == "mean"

    def penalty() -> torch.Tensor:  # on the summed loss: a mean loss divides it too
        if kind == "L2":
            return 0.5 * rate * sum((w * w).sum() for w in weights)
        return rate * sum(w.abs().sum() for w in weights)

    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        ce = loss_fn(forward(x), y)
        loss = ce + penalty() / (len(x) if mean else 1) if kind and rate else ce
        loss.backward()
        opt.step()
        return ce.detach() * len(x) if mean else ce.detach()
    return step


def weights(model: torch.nn.Module) -> list[np.ndarray]:
    """The model's weights as the project lays them out: [W0, b0, ...], W fan_in x fan_out."""
    out: list[np.ndarray] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            out += [m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()]
    return out


def _train(config: Config, feed: Feed, epochs: int, compiled: bool) -> PeerRun:
    torch.manual_seed(config.seed)
    model, opt = build(config, initial_params(config))
    model.train()
    # dynamic=False: one graph for the full batches, one for the last partial batch
    forward: Any = torch.compile(model, dynamic=False) if compiled else model
    step = make_step(config, model, opt, forward)
    times, loss = [], None
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        total = torch.zeros((), dtype=getattr(torch, config.dtype))
        for x, y, lr in feed.epoch(epoch):
            total += step(torch.from_numpy(x), torch.from_numpy(y), lr)
        loss = float(total) / feed.n
        times.append(time.perf_counter() - t0)
    return PeerRun(times, loss)


def eager(config: Config, feed: Feed, epochs: int) -> PeerRun:
    return _train(config, feed, epochs, compiled=False)


def compiled(config: Config, feed: Feed, epochs: int) -> PeerRun:
    return _train(config, feed, epochs, compiled=True)
