"""The README is a landing page; the reference lives in docs/. Links must lead somewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_readme_opens_with_the_two_commands_and_stays_short() -> None:
    lines = README.read_text().splitlines()
    assert lines[2] == "```sh"
    assert lines[3].startswith("make serve ")
    assert lines[4].startswith("make test ")
    assert len(lines) < 300


def test_readme_links_every_docs_page() -> None:
    linked = {target for target in links(README) if target.startswith("docs/")}
    assert {f"docs/{page.name}" for page in DOCS} <= linked


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_docs_page_has_a_title_and_a_way_back(page: Path) -> None:
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# ")
    assert "](../README.md)" in lines[2]


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_and_images_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or (dest.suffix == ".md" and anchor and anchor not in anchors(dest)):
            broken.append(target)
    assert broken == []


def test_readme_headline_figures_are_the_model_cards() -> None:
    # make evaluate rewrites docs/models.md; the README's short tables are copied by hand.
    rows = [line for line in README.read_text().splitlines() if "LSTM-CNN shipped" in line]
    assert len(rows) == 2
    for row, card in zip(rows, ("creditcard/4", "mobile-money/4"), strict=True):
        shipped = json.loads((ROOT / "models" / card / "evaluation.json").read_text())["shipped"]
        assert f"{shipped['test']['roc_auc']:.4f}" in row, card
        assert f"{shipped['test']['average_precision']:.4f}" in row, card


def test_evaluation_markers_are_on_the_models_page() -> None:
    from training.compare import README_BEGIN, README_END, replace_between_markers

    text = (ROOT / "docs" / "models.md").read_text()
    assert text.count(README_BEGIN) == text.count(README_END) == 1
    assert README_BEGIN not in README.read_text()
    assert replace_between_markers(text, "new table\n").count("new table") == 1
