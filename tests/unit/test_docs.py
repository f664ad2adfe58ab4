"""The docs hold together without building them (mkdocs is not installed offline; these are the
checks ``mkdocs build --strict`` makes): every page of docs/ is in mkdocs.yml's nav and every nav
entry exists; every relative link of the README, the changelog and the pages resolves (anchors
included); the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The heading ids mkdocs gives a page: lower case, punctuation dropped, spaces -> '-'."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return out


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = {file for entry in nav for file in entry.values()}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert listed == pages


def test_every_relative_link_resolves():
    broken = []
    for page in [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")]:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_speed_page_is_what_its_generator_writes_from_the_results():
    """docs/benchmarks-speed.md is generated (benchmarks/speed_page.py): regenerate it after a new
    result, never edit it by hand."""
    from benchmarks.speed_page import page

    assert (ROOT / "docs/benchmarks-speed.md").read_text() == page(ROOT / "benchmarks/results"), \
        "stale: python -m benchmarks.speed_page"
