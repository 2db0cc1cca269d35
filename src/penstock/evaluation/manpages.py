"""A labeled retrieval set built from the manual pages installed on this machine.

Each page's NAME line ("ls - list directory contents") gives a query (the description) whose one
relevant document is that page, indexed without its NAME section so the answer is not handed over
verbatim. Pages are read from their roff sources (man and mdoc macros) and reduced to plain text;
nobody on this project wrote them, and they are sampled with a seed, so a run can be repeated.
"""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from penstock.evaluation.datasets import Dataset, Document, Query

MAN_ROOT = Path("/usr/share/man")
SECTIONS = ("man1", "man8")
MIN_BODY_CHARS = 400  # stub pages say too little to be found by anything but their name

_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_NAMED_CHAR = re.compile(r"\\(\(..|\[[^\]]*\])")
_ESCAPES = {"\\-": "-", "\\&": "", "\\e": "\\", "\\ ": " ", "\\~": " ", "\\|": "", "\\^": "", "\\/": "", "\\,": ""}
_CHARS = {"(em": "-", "(en": "-", "(hy": "-", "(bu": "*", "(aq": "'", "(dq": '"', "(lq": '"', "(rq": '"', "(co": "(c)"}
_TEXT_MACROS = {"B", "I", "BR", "BI", "RB", "RI", "IB", "IR", "SM", "SB", "TP", "IP", "Nm", "Ar", "Fl", "Op", "Xr"}


@dataclass(frozen=True, slots=True)
class ManPage:
    name: str  # "ls.1"
    description: str
    body: str


def build(limit: int = 2000, seed: int = 0, root: Path = MAN_ROOT) -> Dataset:
    """A seeded sample of `limit` pages; documents are the pages, one query per page."""
    paths = sorted(p for section in SECTIONS for p in (root / section).glob("*.gz"))
    random.Random(seed).shuffle(paths)
    pages: list[ManPage] = []
    seen_descriptions: set[str] = set()
    for page in _pages(paths):
        # Two pages with one description (aliases, variants) would make a query with two right answers.
        if page.description.lower() in seen_descriptions:
            continue
        seen_descriptions.add(page.description.lower())
        pages.append(page)
        if len(pages) == limit:
            break
    documents = tuple(Document(p.name, p.body) for p in pages)
    queries = tuple(Query(f"q-{p.name}", p.description, frozenset([p.name])) for p in pages)
    return Dataset("manpages", documents, queries)


def _pages(paths: list[Path]) -> Iterator[ManPage]:
    for path in paths:
        try:
            source = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        page = parse(path.name.removesuffix(".gz"), source)
        if page is not None:
            yield page


def parse(name: str, source: str) -> ManPage | None:
    """A page's NAME description and the rest of its text, or None for a redirect or a stub."""
    if source.lstrip().startswith(".so "):
        return None
    sections: list[tuple[str, list[str]]] = [("", [])]
    for raw in source.splitlines():
        line = raw.rstrip()
        if line.startswith(('.\\"', "'\\\"", '.\\\\"')) or line in (".", "'"):
            continue
        if line.startswith((".SH", ".Sh")):
            sections.append((_plain(_macro_args(line)).upper(), []))
        elif line.startswith((".SS", ".Ss")):
            sections[-1][1].append("\n" + _plain(_macro_args(line)) + "\n")
        elif line.startswith(".Nd"):
            sections[-1][1].append("\\- " + _macro_args(line))
        elif line.startswith((".", "'")):
            macro = line[1:].split(maxsplit=1)[0] if len(line) > 1 else ""
            if macro in _TEXT_MACROS and (args := _macro_args(line)):
                sections[-1][1].append(_plain(args))
            elif macro in ("PP", "P", "LP", "Pp", "br", "sp"):
                sections[-1][1].append("")
        else:
            sections[-1][1].append(_plain(line))
    name_lines = [" ".join(lines) for title, lines in sections if title == "NAME"]
    description = _description(name_lines[0]) if name_lines else ""
    body = "\n".join(
        "\n".join([title.title(), *lines]) for title, lines in sections if title not in ("NAME", "")
    ).strip()
    body = re.sub(r"\n{3,}", "\n\n", body)
    if len(description) < 8 or len(body) < MIN_BODY_CHARS:
        return None
    return ManPage(name, description, body)


def _description(name_line: str) -> str:
    """`ls, dir \\- list directory contents` → `list directory contents`."""
    plain = _plain(name_line)
    for separator in (" - ", " -- ", "- "):
        if separator in plain:
            return " ".join(plain.split(separator, 1)[1].split())
    return ""


def _macro_args(line: str) -> str:
    parts = line.split(maxsplit=1)
    return parts[1].replace('"', "") if len(parts) > 1 else ""


def _plain(text: str) -> str:
    text = text.replace("\\-", "\x01")  # a hyphen escape must survive the font and character passes
    text = _FONT.sub("", text)
    text = _NAMED_CHAR.sub(lambda m: _CHARS.get(m.group(1), ""), text)
    for escape, replacement in _ESCAPES.items():
        text = text.replace(escape, replacement)
    return text.replace("\x01", "-")
