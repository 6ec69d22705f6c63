"""Every relative link of README.md and of docs/**/*.md points to something that exists.

Markdown links and images (inline, reference definitions, and HTML ``src``/``href``
attributes), and the files MyST's ``{include}`` directive reads, are resolved against the
page's folder; an ``#anchor`` must name a heading of the target Markdown file (or of the page
itself), spelt as GitHub and MyST (``myst_heading_anchors``) spell it. Links inside code
(fenced blocks, inline spans) are text, not links. External links (``https:``, ``mailto:``
...) are not fetched: the tests run offline.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "docs" / "_build"
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
INLINE_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", flags=re.DOTALL)
TARGETS = (
    re.compile(r"\]\(\s*<([^>]*)>[^)]*\)"),  # [text](<target with spaces>)
    re.compile(r"\]\(\s*([^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"),  # [text](target "title")
    re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^>\s]+)>?", flags=re.MULTILINE),  # [id]: target
    re.compile(r"<(?:img|a|source|video)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)[\"']", re.IGNORECASE),
)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
GITHUB_CLEAN = re.compile(r"[^\w\u4e00-\u9fff\- ]")


def pages() -> list[Path]:
    found = [ROOT / "README.md"]
    found += [p for p in sorted((ROOT / "docs").rglob("*.md")) if BUILD not in p.parents]
    return found


def split_code(text: str) -> tuple[str, list[str]]:
    """The page's prose with every fenced block blanked out (line numbers kept), and the
    info strings and bodies of its MyST directives (```` ```{include} path ````)."""
    prose, directives = [], []
    fence: str | None = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            info = match.group(2).strip()
            if info.startswith("{"):
                directives.append(info)
            prose.append("")
        elif fence is not None:
            closes = match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)
            if closes and match and not match.group(2).strip():
                fence = None
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), directives


def slug(heading: str) -> str:
    """GitHub's anchor of a heading (MyST's ``github`` slugs are the same): the rendered
    text, lower case, spaces to hyphens, punctuation dropped."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = re.sub(r"(\*\*|__|\*)(.+?)\1", r"\2", text)  # emphasis markers
    return GITHUB_CLEAN.sub("", text.strip().lower().replace(" ", "-"))


def anchors(page: Path) -> set[str]:
    prose, _ = split_code(page.read_text())
    found: set[str] = set()
    for line in prose.splitlines():
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            unique, i = base, 1
            while unique in found:
                unique, i = f"{base}-{i}", i + 1
            found.add(unique)
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image of the page outside code, and of every file
    a ``{include}`` directive reads."""
    prose, directives = split_code(page.read_text())
    prose = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)
    found = [
        (prose[: match.start()].count("\n") + 1, match.group(1))
        for pattern in TARGETS
        for match in pattern.finditer(prose)
    ]
    found += [(0, info.split(None, 1)[1]) for info in directives if info.startswith("{include}")]
    return sorted(found)


def broken(page: Path) -> list[str]:
    """Why each relative link of ``page`` does not resolve (empty when all do)."""
    problems = []
    for line, target in links(page):
        where = f"{page.relative_to(ROOT) if ROOT in page.parents else page}:{line}: {target!r}"
        if SCHEME.match(target) or target.startswith("//"):
            continue  # external: not fetched
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part)
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            problems.append(f"{where}: {resolved} does not exist")
            continue
        if anchor:
            if resolved.suffix != ".md":
                problems.append(f"{where}: anchors are checked only into Markdown files")
            elif unquote(anchor) not in anchors(resolved):
                problems.append(f"{where}: no heading of {resolved.name} has the anchor #{anchor}")
    return problems


def test_the_pages_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in pages()}
    assert {"README.md", "docs/guide/index.md", "docs/quality_report.md"} <= names


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    problems = broken(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_checker_finds_what_is_broken_and_ignores_code(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "pic.png").write_bytes(b"")
    (tmp_path / "sub" / "other.md").write_text("# Other page\n\n## A `code` heading: yes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Same\n\n## Same\n\n"
        "[ok](sub/other.md#a-code-heading-yes) ![pic](pic.png) [self](#same-1) [up](#title)\n"
        '[web](https://example.com/missing) [titled](pic.png "a title")\n'
        "[gone](missing.md) [bad anchor](sub/other.md#nope) [no self](#nowhere)\n"
        '<img src="nothing.png"> `[in code](nowhere.md)`\n\n'
        "```\n[in a block](nowhere.md)\n```\n\n"
        "```{include} absent.md\n```\n\n[ref]: also-missing.md\n"
    )
    problems = broken(page)
    found = sorted(p.split(": ", 2)[1] for p in problems)
    assert found == sorted(
        [
            "'missing.md'",
            "'sub/other.md#nope'",
            "'#nowhere'",
            "'nothing.png'",
            "'absent.md'",
            "'also-missing.md'",
        ]
    ), problems
