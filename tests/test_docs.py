"""The README and docs/ as a Spark owner reads them: every relative link and image
points at a file of this repository, and no template placeholder (a line such as
`PERF_TABLE`, meant to be replaced by measured figures) is left in."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_images_exist(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor in the page
        if not (page.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert missing == [], f"{page.name} links to files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_placeholder_left(page):
    left = [line for line in page.read_text().splitlines() if PLACEHOLDER.match(line.strip())]
    assert left == [], f"{page.name} still has placeholders: {left}"
