"""The repository explains itself: code and docs cite documents inside it, never outside.

Design notes and protocol facts live in docs/architecture.md; a citation of a document a reader
does not have (a design page or a protocol write-up kept next to the repository) is a dead end.
Cited anchors (`docs/architecture.md#the-long-poll`, `ssh-probe.md#timeouts`) must exist as
headings of the docs page they name.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.testsupport.repository import ROOT, repository_files

DOCS = ROOT / "docs"
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Citations of documents outside the repository (this file names them, so it is not scanned).
OUTSIDE_CITATIONS = {
    "a path into the shared folder beside the repository": re.compile(r"\.\./shared|\bshared/"),
    "the outside design page": re.compile(r"\bDESIGN\.md"),
    "the outside protocol reference": re.compile(r"protocol\s+reference", re.IGNORECASE),
    "a section of the outside protocol write-up": re.compile(
        r"reference/scaleset-protocol|\bprotocol\s+(?:section\s+)?\d+\.\d", re.IGNORECASE
    ),
}

# History is not rewritten: old entries may name what they cited at the time.
NOT_SCANNED = {"CHANGELOG.md", THIS_FILE}

ANCHOR_CITATION = re.compile(r"\b([A-Za-z0-9_-]+)\.md#([A-Za-z0-9_-]+)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def text_of(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary or unreadable: cites nothing


def outside_citations(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, line) for every outside citation in `text`."""
    found: list[tuple[int, str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in OUTSIDE_CITATIONS.items():
            if pattern.search(line):
                found.append((number, what, line.strip()))
    return found


def scanned_sources() -> list[str]:
    return [
        name
        for name in repository_files()
        if name.endswith((".py", ".md", ".yml")) and name not in NOT_SCANNED
    ]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown page (repeated headings get -1, -2 ... as on GitHub)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        heading = None if in_fence else HEADING.match(line)
        if heading is None:
            continue
        slug = github_slug(heading.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_slugs_follow_github() -> None:
    assert github_slug("Sessions and 409 conflicts") == "sessions-and-409-conflicts"
    assert github_slug("Retries and Retry-After") == "retries-and-retry-after"
    assert github_slug("`SSH_HOST_KEY_POLICY`") == "ssh_host_key_policy"
    assert anchors_of("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_no_file_cites_a_document_outside_the_repository() -> None:
    offenders: list[str] = []
    for name in scanned_sources():
        text = text_of(name)
        if text is None:
            continue
        offenders += [f"{name}:{n}: {what}: {line}" for n, what, line in outside_citations(text)]
    assert not offenders, (
        "cite docs/architecture.md (or another page under docs/) instead of documents readers "
        "do not have:\n" + "\n".join(offenders)
    )


def test_architecture_page_exists_with_its_sections() -> None:
    anchors = anchors_of((DOCS / "architecture.md").read_text(encoding="utf-8"))
    for section in (
        "parts-and-layers",
        "runtime-model",
        "scaling",
        "runner-lifecycle-and-the-deletion-rule",
        "protocol-notes-the-client-relies-on",
    ):
        assert section in anchors


def test_cited_docs_anchors_exist() -> None:
    """Every `<page>.md#anchor` naming a page under docs/ points at one of its headings."""
    pages = {page.stem: anchors_of(page.read_text(encoding="utf-8")) for page in DOCS.glob("*.md")}
    broken: list[str] = []
    for name in repository_files():
        text = text_of(name)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for page, anchor in ANCHOR_CITATION.findall(line):
                if page in pages and anchor not in pages[page]:
                    broken.append(f"{name}:{number}: {page}.md#{anchor}")
    assert not broken, "anchors with no heading in docs/:\n" + "\n".join(broken)


MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def test_relative_markdown_links_point_at_files_of_the_repository() -> None:
    """A moved file must not leave links to its old place behind (`[x](../sim/README.md)`)."""
    files = set(repository_files())
    broken: list[str] = []
    for name in files:
        if not name.endswith(".md") or name == "CHANGELOG.md":
            continue
        text = text_of(name) or ""
        in_fence = False
        for number, line in enumerate(text.splitlines(), start=1):
            if FENCE.match(line):
                in_fence = not in_fence
            if in_fence:
                continue
            for target in MARKDOWN_LINK.findall(INLINE_CODE.sub("", line)):
                path = target.partition("#")[0]
                if not path or "://" in path or path.startswith("mailto:"):
                    continue
                resolved = (ROOT / name).parent / path
                try:
                    relative = resolved.resolve().relative_to(ROOT).as_posix()
                except ValueError:
                    broken.append(f"{name}:{number}: {target} (outside the repository)")
                    continue
                if relative not in files and not resolved.is_dir():
                    broken.append(f"{name}:{number}: {target}")
    assert not broken, "relative links to no file of the repository:\n" + "\n".join(broken)
