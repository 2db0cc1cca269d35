"""Sections → chunks that fit the embedding model: token-aware, heading-aware, with overlap.

Counting uses the embedding model's own tokenizer, so no chunk is cut off when it is embedded. A
chunk never spans two sections; each is labelled with its heading path, which is embedded with it.
Paragraphs are packed whole where they fit, split at sentences where not, and at token windows as
a last resort; each chunk after the first in a section starts with the previous chunk's last
`overlap_tokens` tokens, so a sentence cut at a boundary is still whole in one of the two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tokenizers import Tokenizer

from penstock.retrieval.parsers import Section

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    max_tokens: int = 200  # MiniLM reads 256; room is left for the heading and special tokens
    overlap_tokens: int = 32


@dataclass(frozen=True, slots=True)
class Chunk:
    ordinal: int
    heading: str
    text: str
    tokens: int  # of heading and text together, as embedded

    @property
    def embedded_text(self) -> str:
        return f"{self.heading}\n{self.text}" if self.heading else self.text


class Chunker:
    def __init__(self, tokenizer: Tokenizer, config: ChunkingConfig | None = None) -> None:
        self._tokenizer = tokenizer
        self.config = config or ChunkingConfig()

    def chunks(self, sections: Iterable[Section]) -> list[Chunk]:
        out: list[Chunk] = []
        for section in sections:
            for text in self._section_texts(section):
                chunk = Chunk(len(out), section.heading, text, 0)
                out.append(Chunk(chunk.ordinal, chunk.heading, text, self.count(chunk.embedded_text)))
        return out

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def _section_texts(self, section: Section) -> Iterator[str]:
        budget = max(16, self.config.max_tokens - (self.count(section.heading) + 1 if section.heading else 0))
        # Pieces of one paragraph join with a space, paragraphs with a blank line.
        pieces = [
            (("\n\n" if i == 0 else " "), piece)
            for para in section.text.split("\n\n")
            for i, piece in enumerate(self._pieces(para.strip(), budget))
        ]
        text, used = "", 0
        for joint, piece in pieces:
            size = self.count(piece)
            if text and used + size > budget:
                yield text
                text = self._tail(text, min(self.config.overlap_tokens, budget - size))
                used = self.count(text)
            text = f"{text}{joint}{piece}" if text else piece
            used += size
        if text:
            yield text

    def _pieces(self, paragraph: str, budget: int) -> Iterator[str]:
        if not paragraph:
            return
        if self.count(paragraph) <= budget:
            yield paragraph
            return
        for sentence in _SENTENCE_END.split(paragraph):
            if self.count(sentence) <= budget:
                yield sentence
            else:
                yield from self._windows(sentence, budget)

    def _windows(self, text: str, budget: int) -> Iterator[str]:
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        for start in range(0, len(offsets), budget):
            window = offsets[start : start + budget]
            yield text[window[0][0] : window[-1][1]].strip()

    def _tail(self, text: str, tokens: int) -> str:
        """The last `tokens` tokens of `text`, starting at a word."""
        if tokens <= 0:
            return ""
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        if len(offsets) <= tokens:
            return ""  # the whole chunk would repeat: no overlap rather than a duplicate
        start = offsets[-tokens][0]
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        return text[start:].strip()
