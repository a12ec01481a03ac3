"""The math: config, network, losses, optimizers, the fast step, metrics."""
