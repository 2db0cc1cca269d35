"""Documents parsed in a worker process within limits (audit finding 9: a PDF blocked the event loop 19.8 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from penstock.errors import InvalidRequest
from penstock.retrieval.parser_process import ParseLimits, ParserProcess
from penstock.retrieval.parsers import Section
from tests.retrieval.pdfs import shared_stream_pdf


@pytest.fixture
def parser() -> Iterator[ParserProcess]:
    parser = ParserProcess(ParseLimits(timeout_s=2.0, max_pages=10, max_chars=500_000))
    yield parser
    parser.close()


async def test_a_document_parses_in_the_worker(parser: ParserProcess) -> None:
    assert await parser.parse(b"# Title\nSome text.", "md") == [Section("Title", "Some text.")]
    pages = await parser.parse(shared_stream_pdf(2_000, pages=2), "pdf")
    assert [s.heading for s in pages] == ["page 1", "page 2"] and "Lorem ipsum" in pages[0].text


async def test_a_pdf_past_its_time_is_refused_and_the_loop_stays_free(parser: ParserProcess) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticking = asyncio.create_task(tick())
    started = time.monotonic()
    with pytest.raises(InvalidRequest, match="longer than 2 s"):
        await parser.parse(shared_stream_pdf(4_000_000), "pdf")  # 12 KB that pypdf works at for 20-30 s
    waited = time.monotonic() - started
    ticking.cancel()
    assert waited < 4 and ticks >= waited / 0.05 * 0.5  # the loop kept turning meanwhile
    assert await parser.parse(b"after", "txt") == [Section("", "after")]  # a fresh worker took over


async def test_too_many_pages_or_too_much_text_is_refused(parser: ParserProcess) -> None:
    with pytest.raises(InvalidRequest, match="11 pages; at most 10"):
        await parser.parse(shared_stream_pdf(100, pages=11), "pdf")
    with pytest.raises(InvalidRequest, match="at most 500000"):
        await parser.parse(b"x" * 600_000, "txt")
    with pytest.raises(InvalidRequest, match="cannot read the PDF"):
        await parser.parse(b"not a pdf", "pdf")
