"""The layers, read from the source: imports point down, never in a circle, and backends/ knows
nothing of trainer. Static (the AST of every module), so an import hidden in a function counts
too; only imports under `if TYPE_CHECKING:` are left out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# each subpackage's layer: a module may import its own layer or one below (cli the top); the
# tests of cycles catch two packages of one layer importing each other
LAYERS = {"errors": 0, "fileio": 0, "backends": 0, "core": 1, "data": 1, "run": 2, "sweep": 3,
          "bench": 3, "batch": 3, "track": 3, "serve": 3, "cli": 4, "api": 5, "__init__": 5,
          "__main__": 5}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name (backends/ as trainer.backends)."""
    found = {}
    for base, prefix in ((ROOT / "trainer", "trainer"), (ROOT / "backends", "trainer.backends")):
        for path in base.rglob("*.py"):
            if "backends" in path.relative_to(base).parts and prefix == "trainer":
                continue  # the symlink to backends/
            parts = [prefix, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a package's __init__ counts as the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in child.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) - {name} for name, path in known.items()}


def layer(module: str) -> tuple[str, int]:
    part = module.split(".")[1] if "." in module else "__init__"
    return part, LAYERS[part]


def test_the_graph_sees_the_layers(graph: dict[str, set[str]]) -> None:
    assert "trainer.core.step" in graph and "trainer.backends.numpy" in graph
    assert "trainer.core.config" in graph["trainer.core.step.state"]
    assert "trainer.core.step.select" in graph["trainer.core.step"]  # a package: its __init__
    assert "trainer.backends.ndkernels" in graph["trainer.backends.numpy"]  # relative imports
    assert all(layer(m)[0] in LAYERS for m in graph)


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            walk(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])


def test_backends_know_nothing_of_trainer(graph: dict[str, set[str]]) -> None:
    for module, targets in graph.items():
        if module.startswith("trainer.backends"):
            outside = sorted(t for t in targets if not t.startswith("trainer.backends"))
            assert not outside, f"{module} imports {outside}"


def test_imports_point_down(graph: dict[str, set[str]]) -> None:
    wrong = []
    for module, targets in graph.items():
        part, rank = layer(module)
        for target in targets:
            other, other_rank = layer(target)
            if other_rank > rank:
                wrong.append(f"{module} ({part}) imports {target} ({other})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_cli_prints_what_it_did_not_write_through_one_function() -> None:
    """console.shown (printable, markup escaped) is the CLI's one way to print a value from a
    file: rich's bare `escape` lets an ESC byte through to the terminal."""
    cli = Path(__file__).resolve().parent.parent / "trainer" / "cli"
    for path in cli.glob("*.py"):
        if path.name != "console.py":
            assert "rich.markup import escape" not in path.read_text(), path.name


def test_test_modules_import_no_other_test_module() -> None:
    """Shared test code lives in helpers.py, references.py and conftest.py: a test module that
    imports another hides where its helpers are and runs that module's imports too."""
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name} imports {n}" for n in names if n.startswith("test_")]
    assert not found


def test_every_package_is_installed() -> None:
    """pyproject lists the packages by hand: a new one left out would be missing once
    installed (from a checkout every import still works)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "trainer").rglob(
        "__init__.py") if "backends" not in p.relative_to(ROOT).parts}
    assert found | {"trainer.backends"} == listed
