"""Everything the code and the docs point to exists in the repository.

1. No tracked text file points to the design notes that live outside the repository (users never see
   them): definitions belong in docs/methods.md, the layout and the machines in docs/architecture.md.
2. Every reference to a docs page with an anchor (a `docs/` path, then `#` and a heading slug) names an
   existing page and an existing heading of it, by GitHub's slug rules.
3. Every relative link in README.md and the docs pages points to an existing file (and heading).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = (".py", ".ipynb", ".md", ".toml", ".txt")
# The notes outside the repository, spelled in pieces so that this file does not mention them itself.
OUTSIDE_NOTES = tuple(stem + ".md" for stem in ("PAPERS", "ENVIRONMENT", "DESIGN"))
# Files allowed to mention them anyway. Keep it empty: point to a docs page instead.
ALLOWLIST: frozenset[str] = frozenset()

_DOC_REF = re.compile(r"(?:(?<![\w/.-])|(?<=\.\./))docs/([\w.-]+\.md)(?:#([\w-]*))?")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=[\"']([^\"']+)[\"']", re.IGNORECASE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def tracked_text_files() -> list[Path]:
    """Text files git knows about: tracked, plus new ones not ignored (so a new page is checked too)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the docs checks need `git ls-files`")
    names = [n for n in out.split("\0") if n.endswith(TEXT_SUFFIXES)]
    return [ROOT / n for n in sorted(set(names)) if (ROOT / n).is_file()]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of markdown outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if match:
            marker = match.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
            continue
        if fence is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lowercase, punctuation dropped, spaces → hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a markdown page offers: heading slugs (repeats get -1, -2, ...) and <a id=...>."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(read(page)):
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(_HTML_ANCHOR.findall(line))
    return found


def test_slug_follows_github_rules():
    assert slug("Sweep and threshold") == "sweep-and-threshold"
    assert slug("What a neuron's activation is: `a`, (really)!") == "what-a-neurons-activation-is-a-really"
    assert slug("Top-k and [links](x.md)") == "top-k-and-links"


def test_no_pointer_to_notes_outside_the_repository():
    offenders = []
    for path in tracked_text_files():
        name = path.relative_to(ROOT).as_posix()
        if name in ALLOWLIST:
            continue
        for number, line in enumerate(read(path).splitlines(), 1):
            offenders += [f"{name}:{number}: {note}" for note in OUTSIDE_NOTES if note in line]
    assert not offenders, (
        "These point to notes that are not in the repository; point to the section of docs/methods.md "
        "or docs/architecture.md that says the same:\n" + "\n".join(offenders)
    )


def test_docs_references_name_existing_pages_and_headings():
    problems, checked = [], 0
    cache: dict[Path, set[str]] = {}
    for path in tracked_text_files():
        name = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(read(path).splitlines(), 1):
            for page_name, anchor in _DOC_REF.findall(line):
                checked += 1
                page = ROOT / "docs" / page_name
                if not page.is_file():
                    problems.append(f"{name}:{number}: docs/{page_name} does not exist")
                elif anchor and anchor not in cache.setdefault(page, anchors(page)):
                    problems.append(f"{name}:{number}: docs/{page_name} has no heading #{anchor}")
    assert checked, "no docs references found at all: is the pattern still right?"
    assert not problems, "\n".join(problems)


def markdown_pages() -> list[Path]:
    pages = [p for p in tracked_text_files() if p.suffix == ".md"]
    return [p for p in pages if p == ROOT / "README.md" or p.parent == ROOT / "docs"]


def test_relative_links_in_readme_and_docs_resolve():
    pages = markdown_pages()
    assert ROOT / "README.md" in pages and ROOT / "docs" / "methods.md" in pages
    problems = []
    for page in pages:
        name = page.relative_to(ROOT).as_posix()
        for number, line in prose_lines(read(page)):
            for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                    continue  # http:, https:, mailto:: not checked offline
                file_part, _, anchor = target.partition("#")
                linked = (page.parent / file_part).resolve() if file_part else page
                if not linked.exists():
                    problems.append(f"{name}:{number}: {target} -> {file_part} does not exist")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    problems.append(f"{name}:{number}: {target} -> no heading #{anchor}")
    assert not problems, "\n".join(problems)
