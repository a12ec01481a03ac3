"""A run for people and other programs: `trainer serve`'s page and API, and ONNX export.

The web stack (Starlette, uvicorn) and onnx are optional extras, imported only by the modules
that need them; `require` names the install command when one is missing."""

from __future__ import annotations

import importlib.util

from trainer.errors import UsageError, install_hint


def require(extra: str, *modules: str) -> None:
    """UsageError naming the pip command unless every module of the extra can be imported."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise UsageError(f"this needs {', '.join(missing)}, from the {extra!r} extra: "
                         f"{install_hint(extra)}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a module blocked in sys.modules
        return False
