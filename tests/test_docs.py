"""The README stays short (at most 250 lines, depth in docs/), its quick start is the two
commands CI runs, and every relative link in README.md and docs/*.md resolves: the file
exists and, where the link names a heading (#anchor), that heading is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slugs(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to -."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_readme_is_at_most_250_lines_and_links_to_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in ("cli", "backends", "serving-and-export", "data", "sweeps-and-batches",
                 "resilience"):
        assert (ROOT / "docs" / f"{page}.md").is_file()
        assert f"(docs/{page}.md)" in readme, page
    quick = readme.split("## Quick start", 1)[1].split("```")[1].splitlines()[1:]
    assert quick == ['python -m pip install . && python -m trainer train',
                     'python -m pip install ".[test]" && python -m pytest']


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    found = links(page)
    assert found or page.name != "README.md"
    for target in found:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), (page.name, target)
        if anchor:
            assert resolved.suffix == ".md" and anchor in slugs(resolved), (page.name, target)
