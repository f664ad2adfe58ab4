"""The docs hold together: the site builds with ``mkdocs build --strict`` (every page in the nav,
every link and anchor of the pages resolving: mkdocs.yml's ``validation``); every relative link of
the README and the changelog, which the site does not hold, resolves too (anchors included); the
README stays short; generated pages are what their generator writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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


def test_the_site_builds_strictly(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, text=True, capture_output=True, timeout=300, check=False,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "site" / "images" / "prepare-10m-memory.png").stat().st_size > 0  # linked from benchmarks/results


def test_every_relative_link_resolves():
    broken = []
    for page in [ROOT / "README.md", ROOT / "CHANGELOG.md"]:
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


def test_the_offpolicy_page_is_what_its_generator_writes_from_the_results():
    """docs/results-offpolicy.md is generated (benchmarks/offpolicy_page.py) from the audit's JSONs."""
    from benchmarks.offpolicy_page import SOURCES, page

    sources = {path: json.loads((ROOT / path).read_text()) for path in SOURCES}
    assert (ROOT / "docs/results-offpolicy.md").read_text() == page(sources, "item dr"), \
        "stale: python -m benchmarks.offpolicy_page --page docs/results-offpolicy.md"


def test_the_families_page_is_what_its_generator_writes_from_the_results():
    """docs/results-families.md is generated (benchmarks/families_page.py) from its SOURCES."""
    from benchmarks.families_page import render

    assert (ROOT / "docs/results-families.md").read_text() == render(ROOT), "stale: python -m benchmarks.families_page"


def test_the_coverage_check_page_is_what_its_generator_writes_from_the_results():
    """benchmarks/results/families-coverage-check-seed100-cpu.md is generated (benchmarks/coverage_check.py)."""
    from benchmarks.coverage_check import PAGE, ROOT as RESULTS, render

    assert (RESULTS / PAGE).read_text() == render(RESULTS), "stale: python -m benchmarks.coverage_check"
