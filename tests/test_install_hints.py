"""Install hints name this checkout's extras (`pip install ".[extra]"`), never `trainer[...]`:
on PyPI, `trainer` is an unrelated project."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from trainer.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
# every file whose text a user reads: the package's messages (backends/ is the package's
# trainer/backends), the scripts, the README and docs
SOURCES = sorted([*ROOT.glob("trainer/**/*.py"), *ROOT.glob("backends/*.py"),
                  *ROOT.glob("scripts/*.py"), *ROOT.glob("*.md"), *ROOT.glob("docs/*.md")])
HINT = re.compile(r"pip install\s+(\S+)")
OTHERS = {"'jax[cuda12]'"}  # jax's own extra, on PyPI under jax's name


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"])


def test_no_hint_names_a_trainer_package_and_every_extra_exists() -> None:
    hints = []
    for path in SOURCES:
        text = path.read_text()
        assert "trainer[" not in text, path
        if path.suffix == ".py":  # one string: Python's "..." f"..." over two lines
            text = re.sub(r'"\s*\n\s*f?"', "", text)
        hints += [(path.name, m.group(1).replace('\\"', '"')) for m in HINT.finditer(text)]
    assert len(hints) >= 8  # the backends', the sweep's, serve's and the README's
    extras = _extras()
    for name, hint in hints:
        if hint.startswith(tuple(OTHERS)) or hint.startswith("-") or hint in (".", "pip"):
            continue  # the jax CUDA wheels; pip's own options; the package itself
        found = re.match(r'"\.\[([a-z0-9,\-{}]+)\]"', hint)
        assert found, (name, hint)
        assert set(found.group(1).split(",")) <= extras | {"{extra}"}, (name, hint)


def test_a_missing_extra_names_the_checkout_command() -> None:
    from trainer.serve import require

    with pytest.raises(UsageError) as e:
        require("serve", "no_such_module_here")
    assert 'python -m pip install ".[serve]" in the trainer checkout' in str(e.value)
