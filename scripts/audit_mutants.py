"""Put known bugs into a copy of the tree, one at a time, and list the tests that catch each.

    python scripts/audit_mutants.py [NAME ...] [--all-tests]

Each mutant is a small edit an audit made by hand (a batch skipped, the shuffle lost, L2 added
twice, a wrong derivative in a kernel). A test suite that lets one pass cannot fail where it
matters. The copy lives in a temporary directory; the working tree is never touched. By default
the fast suite runs (`-m "not slow"`), as a reviewer's quick check would.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (file, the exact text, what the bug puts there)
MUTANTS = {
    "auto: numba whatever its kernel covers": (
        "trainer/run/auto.py", "if choice.fallback is None and choice.kind == FusedStep.kind:",
        "if True:"),
    "auto: jax below its size": (
        "trainer/run/auto.py", "big = n >= JAX_MIN_WEIGHTS", "big = n < JAX_MIN_WEIGHTS"),
    "auto: the GPU not first": (
        "trainer/run/auto.py", 'gpu = available("cupy", device)', "gpu = None"),
    "auto: a resumed run picked again": (
        "trainer/cli/train.py", "if given == AUTO and recorded is not None and available(",
        "if False and given == AUTO and recorded is not None and available("),
    "skip the last batch": (
        "trainer/run/loop.py", "while done < steps:", "while done < steps - 1:"),
    "drop the partial batch": (
        "trainer/run/loop.py", "steps = -(-self.n_train // size)", "steps = self.n_train // size"),
    "no reshuffle": (
        "trainer/run/loop.py", 'state.perm = self.rngs["shuffle"].permutation(self.n_train)',
        "state.perm = np.arange(self.n_train)"),
    "the same permutation every epoch": (
        "trainer/run/loop.py", 'state.perm = self.rngs["shuffle"].permutation(self.n_train)',
        "state.perm = np.random.default_rng(config.seed).permutation(self.n_train)"),
    "L2 added twice": (
        "trainer/core/optim.py",
        'grad += (scale * rate) * (w if kind == "L2" else xp.sign(w))',
        'grad += (scale * rate) * (2 * w if kind == "L2" else xp.sign(w))'),
    "a wrong sigmoid derivative in the fused NumPy kernel": (
        "backends/ndkernels.py", "nx.subtract(1.0, a, out=tmp)\n            tmp *= a",
        "nx.add(1.0, a, out=tmp)\n            tmp *= a"),
    "numba's elastic warp blends in another order": (
        "backends/numba_elastic.py", "top, bottom = a + fc * (b - a), d + fc * (e - d)",
        "top, bottom = a * (1 - fc) + fc * b, d + fc * (e - d)"),
    "numba's elastic warp takes a wrong neighbour": (
        "backends/numba_elastic.py", "flat[k + width], flat[k + width + 1]",
        "flat[k + width], flat[k + width + 2]"),
    "numba quietly trains with NumPy's step": (
        "trainer/core/step/select.py", "    if kernel is not None:\n",
        "    if kernel is not None and False:\n"),
    # issue 30's audit: each once slipped past the fast suite
    "an edited config resumes the old group": (
        "trainer/batch/plan.py", 'SAME_BATCH = ("name", "configs", ', 'SAME_BATCH = ("name", '),
    "compare reads the first run's keys only": (
        "trainer/run/compare.py", "keys = list(dict.fromkeys(k for f in flat for k in f))",
        "keys = list(flat[0])"),
    "an IDX .gz read without its bound": (
        "trainer/data/idx.py", "if got != expected or f.read(1):",
        "if got != expected or f.read():"),
    "jax's stretch takes its first step's rates": (
        "trainer/core/step/compiled.py", "            r = rates[i]\n",
        "            r = rates[first]\n"),
    "the best weights never put back": (
        "trainer/run/loop.py",
        "if self.best_params is not None and self.config.restore_best_weights:",
        "if False and self.best_params is not None:"),
    "the validation split taken from the test set": (
        "trainer/run/loop.py",
        "on_device(data.train_images[val_idx],\n" + " " * 43 + "data.train_labels[val_idx])",
        "on_device(data.test_images[:len(val_idx)],\n" + " " * 43
        + "data.test_labels[:len(val_idx)])"),
    "class names as markup in the per-class table": (
        "trainer/cli/display.py", "table.add_row(*row(shown(name), m))",
        "table.add_row(*row(name, m))"),
    # issue 31: the fused kernel's new features, each broken once
    "numba's Nesterov step is plain momentum": (
        "trainer/backends/numba_step.py", "w[j] += m * vj + g[j]", "w[j] += vj"),
    "numba's dropout forgets the mask going down": (
        "trainer/backends/numba_step.py", "_times(down, args.mbuf", "_times(down, 0 * args.mbuf"),
    "numba's dropout keys restart each epoch": (
        "trainer/core/step/fused.py", "step_key(seed, first_global + s, i)",
        "step_key(seed, s, i)"),
    "numba's L1 penalty ignores negative weights": (
        "trainer/backends/numba_step.py",
        "sign = one if w[j] > zero else (-one if w[j] < zero else zero)",
        "sign = one if w[j] > zero else zero"),
    "numba's AdamW forgets its decay": (
        "trainer/backends/numba_step.py", "wj = w[j] * decay if decays else w[j]", "wj = w[j]"),
    "numba's leaky ReLU is a ReLU going down": (
        "trainer/backends/numba_step.py", "gr[j] = gr[j] if ar[j] > zero else leak * gr[j]",
        "gr[j] = gr[j] if ar[j] > zero else zero"),
    "numba trains the batch before augmenting it": (
        "trainer/core/step/fused.py",
        "gathered[...] = self.augment(gathered, rows)", "pass"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"mutants to try (default: all): {list(MUTANTS)}")
    parser.add_argument("--all-tests", action="store_true", help="slow tests too")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in MUTANTS]
    if unknown:
        sys.exit(f"error: unknown mutant {unknown[0]!r}; choose from {', '.join(MUTANTS)}")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    survivors = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        for name in files:
            source = ROOT / name
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():  # trainer/backends -> ../backends
                os.symlink(os.readlink(source), copy / name)
            elif source.is_file():
                shutil.copy2(source, copy / name)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-o", "addopts=", *([] if args.all_tests else ["-m", "not slow"])]
        # the unmutated copy first: a test that fails there (this machine lacks what it needs)
        # would make every mutant look caught, so the mutants' runs leave it out
        baseline = subprocess.run(command, cwd=copy, capture_output=True, text=True)
        failing = re.findall(r"^FAILED (\S+)", baseline.stdout, re.M)
        if baseline.returncode not in (0, 1) or len(failing) > 25:
            sys.exit("error: the unmutated copy fails its tests:\n" + baseline.stdout[-2000:])
        for test in failing:
            print(f"fails unmutated here, left out: {test}")
        command += [f"--deselect={test}" for test in failing]
        for name in args.names or MUTANTS:
            path, old, new = MUTANTS[name]
            source = (copy / path).read_text()
            if source.count(old) != 1:
                sys.exit(f"error: {path} no longer holds the text of mutant {name!r} once; "
                         f"update MUTANTS")
            (copy / path).write_text(source.replace(old, new))
            # the copy's own packages first (python -m puts the working directory on sys.path)
            done = subprocess.run(command, cwd=copy, capture_output=True, text=True)
            (copy / path).write_text(source)
            failed = re.findall(r"^FAILED (\S+)", done.stdout, re.M)
            last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
            print(f"{name}: {'caught' if failed else 'NOT CAUGHT'} ({last})")
            for test in failed:
                print(f"    {test}")
            if not failed:
                survivors.append(name)
            sys.stdout.flush()
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
