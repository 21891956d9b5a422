"""The documentation is self-contained: every citation resolves inside the repository.

Code, configs, notebooks and tests cite the method reference as ``docs/method.md`` followed by
a section sign and a number (a heading ``## N.`` or ``### N.M`` of that file), optionally
with an item of its section 11, the numbered list of the authors' code defects ("item K",
"defect K", "items K-L"). These tests check that every cited section and item exists, that
every ``docs/<name>.md`` path named anywhere exists, and that nothing points at documents
kept outside the repository. No torch import: this runs in a fraction of a second.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
THIS = Path(__file__).resolve()

# Names of documents that live outside the repository. Built from pieces so that this file,
# which is scanned like every other, does not match itself.
FORBIDDEN = ("paper" + "-spec", "../" + "shared", "shared" + "/docs", "anchors" + ".md",
             "design" + ".md", "style" + ".md", "style" + " rule", "synthetic-city" + ".md",
             "published-results" + ".md")

SECTION = r"(?P<sec>\d+(?:\.\d+)?)(?:\s*[-–]\s*(?P<sec2>\d+(?:\.\d+)?))?"
ITEMS = r"(?P<kind>items?|defects?)\s+(?P<k>\d+)(?:\s*[-–]\s*(?P<k2>\d+))?"
# One citation after "docs/method.md": separators ", ", "; ", " and " between several of them.
PART = re.compile(r"\s*[,;]?\s*(?:and\s+)?§\s?" + SECTION + r"(?:,?\s+" + ITEMS + r")?")
# An item of section 11 cited anywhere, with or without the file name before it.
BARE_ITEM = re.compile(r"§\s?11,?\s+" + ITEMS)
DOC_PATH = re.compile(r"(?<![\w./-])docs/[\w.-]+\.md")


@lru_cache(maxsize=None)
def repo_texts() -> tuple[tuple[str, str], ...]:
    """(path, text) of every tracked or untracked-but-not-ignored text file but this one."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no file list to scan")
    texts = []
    for name in sorted(set(out.decode().split("\0")) - {""}):
        path = ROOT / name
        if not path.is_file() or path.resolve() == THIS:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary
        if "\0" in text:
            continue
        if name.endswith(".ipynb"):  # cite from what a reader sees, not from JSON escapes
            try:
                cells = json.loads(text).get("cells", [])
                text += "\n" + "\n".join("".join(c.get("source", "")) for c in cells)
            except (ValueError, AttributeError):
                pass
        texts.append((name, text))
    return tuple(texts)


@lru_cache(maxsize=None)
def method_index() -> tuple[frozenset, frozenset]:
    """(section numbers with a heading, item numbers of section 11's list) of docs/method.md."""
    text = METHOD.read_text(encoding="utf-8")
    sections = set(re.findall(r"^##\s+(\d+)\.\s", text, re.M))
    sections |= set(re.findall(r"^###\s+(\d+\.\d+)\s", text, re.M))
    body = re.search(r"^##\s+11\.\s.*?(?=^##\s|\Z)", text, re.M | re.S)
    items = set(re.findall(r"^(\d+)\.\s", body.group(0), re.M)) if body else set()
    return frozenset(sections), frozenset(int(i) for i in items)


def _section_range(first: str, last: str | None) -> list[str]:
    """``3.2``-``3.3`` -> [3.2, 3.3]; ``1``-``2`` -> [1, 2]; mixed or reversed: the endpoints."""
    if last is None:
        return [first]
    a, b = first.split("."), last.split(".")
    if len(a) == len(b) == 1 and int(a[0]) <= int(b[0]):
        return [str(n) for n in range(int(a[0]), int(b[0]) + 1)]
    if len(a) == len(b) == 2 and a[0] == b[0] and int(a[1]) <= int(b[1]):
        return [f"{a[0]}.{n}" for n in range(int(a[1]), int(b[1]) + 1)]
    return [first, last]


def _item_range(m: re.Match) -> list[int]:
    k = int(m.group("k"))
    return list(range(k, int(m.group("k2") or k) + 1))


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def forbidden_hits(text: str) -> list[str]:
    return [name for name in FORBIDDEN if name in text]


def test_no_reference_to_documents_outside_the_repository() -> None:
    assert forbidden_hits("see " + FORBIDDEN[0] + " §3.2"), "the detector itself must work"
    texts = repo_texts()
    assert len(texts) >= 20, f"only {len(texts)} files scanned"
    bad = [f"{name}:{_line(text, text.find(hit))}: {hit}"
           for name, text in texts for hit in forbidden_hits(text)]
    assert not bad, "references to documents outside the repository:\n" + "\n".join(bad)


def test_method_reference_has_the_cited_structure() -> None:
    sections, items = method_index()
    assert {"1", "2.1", "3.2", "11"} <= sections, sorted(sections)
    assert items and sorted(items) == list(range(1, max(items) + 1)), \
        f"section 11's items must be numbered 1..N without gaps: {sorted(items)}"


def test_every_section_citation_exists() -> None:
    sections, items = method_index()
    found, bad = 0, []
    for name, text in repo_texts():
        for m in re.finditer(r"docs/method\.md", text):
            pos = m.end()
            while (part := PART.match(text, pos)) is not None:
                pos = part.end()
                found += 1
                where = f"{name}:{_line(text, part.start())}: {part.group(0).strip()}"
                missing = [s for s in _section_range(part.group("sec"), part.group("sec2"))
                           if s not in sections]
                if missing:
                    bad.append(f"{where} (no heading for §{', §'.join(missing)})")
                if part.group("kind"):
                    if part.group("sec") != "11":
                        bad.append(f"{where} (items are cited in section 11 only)")
                    elif any(k not in items for k in _item_range(part)):
                        bad.append(f"{where} (section 11 has items 1-{max(items, default=0)})")
    assert found, "no docs/method.md citation found: the scan is broken"
    assert not bad, "citations of docs/method.md that do not resolve:\n" + "\n".join(bad)


def test_every_section_11_item_citation_exists() -> None:
    _, items = method_index()
    found, bad = 0, []
    for name, text in repo_texts():
        for m in BARE_ITEM.finditer(text):
            found += 1
            if any(k not in items for k in _item_range(m)):
                bad.append(f"{name}:{_line(text, m.start())}: {m.group(0)}")
    assert found, "no section 11 item citation found: the scan is broken"
    assert not bad, f"items not in section 11 (1-{max(items, default=0)}):\n" + "\n".join(bad)


def test_every_docs_path_exists() -> None:
    found, bad = 0, []
    for name, text in repo_texts():
        for m in DOC_PATH.finditer(text):
            found += 1
            if not (ROOT / m.group(0)).is_file():
                bad.append(f"{name}:{_line(text, m.start())}: {m.group(0)}")
    assert found, "no docs/<name>.md path found: the scan is broken"
    assert not bad, "paths under docs/ that do not exist:\n" + "\n".join(bad)
