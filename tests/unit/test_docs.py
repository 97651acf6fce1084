"""The README and docs/ hold together: the README stays short, every relative link points to a
file that exists (and, with an `#anchor`, to a heading of it, by GitHub's slug rules), and every
page under docs/ is reachable from the README or another page."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 170

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target may be in <>, and may carry a "title".
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks."""
    lines: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and match and match.group(1)[0] == fence[0]:
            if len(match.group(1)) >= len(fence):
                fence = None
        elif fence is None:
            lines.append(line)
    return lines


def heading_text(markdown: str) -> str:
    """A heading's text as GitHub renders it: code spans as their content, links as their
    text, emphasis markers gone."""
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), markdown)
    text = LINK.sub(lambda m: m.group(1), text)
    return re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)


def slug(markdown: str) -> str:
    """GitHub's anchor of a heading (github-slugger): lower case, every character but letters,
    digits, `_`, `-` and spaces dropped, each space a `-`."""
    text = heading_text(markdown).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a page; a repeated heading gets `-1`, `-2`, ... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """The targets of a page's links that point inside the repository (no scheme, no `//`)."""
    targets = []
    for line in prose_lines(path.read_text()):
        line = CODE_SPAN.sub(lambda m: "code" if "](" in m.group(2) else m.group(0), line)
        for match in LINK.finditer(line):
            target = match.group(2).strip("<>")
            if target and not SCHEME.match(target) and not target.startswith("//"):
                targets.append(target)
    return targets


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        location, _, anchor = target.partition("#")
        location = unquote(location.split("?", 1)[0])
        resolved = (path.parent / location).resolve() if location else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {location or path.name}")
    return broken


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Webhooks: told when a job ends", "webhooks-told-when-a-job-ends"),
        ("The operators' dashboard", "the-operators-dashboard"),
        ("`GET /api/jobs`: the caller's own jobs", "get-apijobs-the-callers-own-jobs"),
        ("A stack: `docker-compose.yml`", "a-stack-docker-composeyml"),
        ("`service/webhooks_delivery.py`: the process", "servicewebhooks_deliverypy-the-process"),
        ("Beyond eHealth's contract: links, ETA", "beyond-ehealths-contract-links-eta"),
        ("Retries, dead letters, replay", "retries-dead-letters-replay"),
        ("[The client](client.md) and **more**", "the-client-and-more"),
    ],
)
def test_headings_get_githubs_anchors(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_a_repeated_heading_gets_a_numbered_anchor(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Errors\n\n```sh\n## not a heading\n```\n\n### Errors\n")
    assert anchors(page) == {"title", "errors", "errors-1"}


def test_links_in_code_are_not_links_and_broken_ones_are_found(tmp_path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#other-page), [self](#page), [web](https://example.org/x.md),\n"
        "[gone](missing.md), [no anchor](other.md#nowhere), `[code](nothing.md)`\n\n"
        "```md\n[fenced](nothing.md)\n```\n"
    )
    assert relative_links(page) == [
        "other.md#other-page",
        "#page",
        "missing.md",
        "other.md#nowhere",
    ]
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#nowhere: no heading #nowhere in other.md",
    ]


def test_the_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_every_page_under_docs_is_linked_from_the_readme_or_another_page() -> None:
    assert DOCS, "no docs/*.md found"
    linked: set[Path] = set()
    for page in PAGES:
        for target in relative_links(page):
            location = unquote(target.partition("#")[0].split("?", 1)[0])
            resolved = (page.parent / location).resolve()
            if location and resolved != page.resolve():
                linked.add(resolved)
    unlinked = [str(doc.relative_to(ROOT)) for doc in DOCS if doc.resolve() not in linked]
    assert unlinked == []
