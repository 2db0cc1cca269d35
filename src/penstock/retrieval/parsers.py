"""Documents in, sections out: plain text, Markdown, HTML and PDF, each as (heading, text) pairs.

Headings are kept apart from the text so the chunker can start chunks at them and label each chunk
with where it came from. PDF goes through pypdf; HTML through the standard library's parser.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Literal

from penstock.errors import InvalidRequest

Format = Literal["txt", "md", "html", "pdf"]
SUFFIXES: dict[str, Format] = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}


@dataclass(frozen=True, slots=True)
class Section:
    heading: str  # the heading path, "Guide > Install"; empty before any heading
    text: str


def format_of(source: str) -> Format:
    fmt = SUFFIXES.get(PurePath(source).suffix.lower())
    if fmt is None:
        raise InvalidRequest(f"cannot tell the format of {source!r}; known: {sorted(SUFFIXES)}", param="format")
    return fmt


def parse(content: bytes, fmt: Format, *, max_pages: int | None = None) -> list[Section]:
    """`max_pages`: a PDF with more is refused before any page is read. The server parses in a worker
    process (retrieval/parser_process.py): a document's cost is not its size."""
    if fmt == "pdf":
        return _pdf(content, max_pages)
    text = _decode(content)
    if fmt == "md":
        return _markdown(text)
    if fmt == "html":
        return _html(text)
    return _nonempty([Section("", text)])


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the document is not UTF-8 text: {exc}", param="documents") from exc


_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown(text: str) -> list[Section]:
    sections, path, lines = [], [], []  # path: the open headings, outermost first
    fenced = False
    for line in text.splitlines():
        fenced ^= line.lstrip().startswith("```")
        match = None if fenced else _ATX.match(line)
        if match is None:
            lines.append(line)
            continue
        sections.append(Section(" > ".join(h for _, h in path), "\n".join(lines)))
        level = len(match.group(1))
        path = [(lvl, h) for lvl, h in path if lvl < level] + [(level, match.group(2))]
        lines = []
    sections.append(Section(" > ".join(h for _, h in path), "\n".join(lines)))
    return _nonempty(sections)


class _HtmlText(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCKS = frozenset({"p", "div", "li", "tr", "br", "section", "article", "pre", "blockquote", "table", "ul", "ol"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self._path: list[tuple[int, str]] = []
        self._text: list[str] = []
        self._heading: list[str] | None = None
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif _heading_level(tag):
            self._close_section()
            self._heading = []
        elif tag in self._BLOCKS:
            self._text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif (level := _heading_level(tag)) and self._heading is not None:
            title = " ".join("".join(self._heading).split())
            self._path = [(lvl, h) for lvl, h in self._path if lvl < level] + [(level, title)]
            self._heading = None
        elif tag in self._BLOCKS:
            self._text.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        (self._heading if self._heading is not None else self._text).append(data)

    def _close_section(self) -> None:
        self.sections.append(Section(" > ".join(h for _, h in self._path), "".join(self._text)))
        self._text = []

    def result(self) -> list[Section]:
        self._close_section()
        return self.sections


def _heading_level(tag: str) -> int:
    return int(tag[1]) if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456" else 0


def _html(text: str) -> list[Section]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return _nonempty(parser.result())


def _pdf(content: bytes, max_pages: int | None) -> list[Section]:
    from pypdf import PdfReader  # only PDF ingestion pays for the import
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(content))
        if max_pages is not None and len(reader.pages) > max_pages:
            raise InvalidRequest(
                f"the PDF has {len(reader.pages)} pages; at most {max_pages} are read", param="documents"
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as exc:
        raise InvalidRequest(f"cannot read the PDF: {exc}", param="documents") from exc
    return _nonempty([Section(f"page {i}", text) for i, text in enumerate(pages, start=1)])


def _nonempty(sections: list[Section]) -> list[Section]:
    cleaned = [Section(s.heading, _tidy(s.text)) for s in sections]
    return [s for s in cleaned if s.text]


def _tidy(text: str) -> str:
    """Trailing spaces gone, runs of blank lines down to one: paragraph breaks survive."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
