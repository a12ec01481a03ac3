"""Benchmark: the same as `trainer bench` (see `python scripts/bench.py --help`).

    python scripts/bench.py --peers          # every backend and peer, batch 32..4096
"""

import sys

from trainer.cli.app import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]], prog_name="scripts/bench.py")
