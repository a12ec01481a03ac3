"""A hash of the trained weights for a few configs: run it on two source trees to check that a
change kept the NumPy numerics bit for bit.

    PYTHONPATH=OLD_TREE python scripts/weights_hash.py > old.txt
    PYTHONPATH=NEW_TREE python scripts/weights_hash.py > new.txt && diff old.txt new.txt

Uses only the public Python API; 6,000 training images, 2 epochs a config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from trainer import Config, default_config, load_dataset, train

ROOT = Path(__file__).resolve().parent.parent
BASE = default_config().to_dict()
CASES = {  # each a change from the default config (mnist-99: its own file)
    "default": {},
    "default-batch-512": {"batch_size": 512},
    "mnist-99 recipe": None,
    "adam-l2": {"optimizer": "adam", "learning_rate": 0.001, "regularization_type": "L2",
                "regularization_rate": 0.0001},
    "adamw-mse": {"optimizer": "adamw", "learning_rate": 0.001, "weight_decay": 0.01,
                  "loss": "mse", "layers": [{"nodes": 784, "activation": "relu"},
                                            {"nodes": 64, "activation": "sigmoid"},
                                            {"nodes": 10}]},
    "l1-tanh-relu": {"regularization_type": "L1", "regularization_rate": 0.0001,
                     "layers": [{"nodes": 784, "activation": "tanh"},
                                {"nodes": 256, "activation": "relu"},
                                {"nodes": 64, "activation": "softmax"}, {"nodes": 10}]},
}


def main() -> None:
    data = load_dataset().limit(6000, 1000)
    for name, change in CASES.items():
        if change is None:
            spec = json.loads((ROOT / "configs" / "mnist-99.json").read_text())
        else:
            spec = BASE | change
        result = train(Config.from_dict(spec | {"epochs": 2}), data, "numpy")
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes()
                                         for p in result.params)).hexdigest()[:16]
        print(f"{name:<18} {digest}  loss {result.history[-1].loss!r}  "
              f"test {result.test_accuracy}")


if __name__ == "__main__":
    main()
