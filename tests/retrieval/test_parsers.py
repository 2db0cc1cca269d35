import io

import pypdf
import pytest

from penstock.errors import InvalidRequest
from penstock.retrieval.parsers import Section, format_of, parse


def test_markdown_sections_carry_their_heading_path() -> None:
    text = b"Preface.\n# Guide\nIntro.\n## Install\nRun pip.\n```\n# a comment, not a heading\n```\n# Other\nEnd."
    assert parse(text, "md") == [
        Section("", "Preface."),
        Section("Guide", "Intro."),
        Section("Guide > Install", "Run pip.\n```\n# a comment, not a heading\n```"),
        Section("Other", "End."),
    ]


def test_html_keeps_text_and_headings_and_drops_scripts() -> None:
    page = b"<html><head><title>t</title><style>p{}</style></head><body><h1>Top</h1><p>Hello <b>world</b>"
    page += b"<script>steal()</script></p><h2>Sub</h2><ul><li>one</li><li>two</li></ul></body></html>"
    assert parse(page, "html") == [Section("Top", "Hello world"), Section("Top > Sub", "one\n\ntwo")]


def test_pdf_text_comes_out_page_by_page() -> None:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=200, height=200)
    buffer = io.BytesIO()
    writer.write(buffer)
    assert parse(buffer.getvalue(), "pdf") == []  # a blank page holds no text: nothing to index
    with pytest.raises(InvalidRequest):
        parse(b"not a pdf", "pdf")


def test_the_format_follows_the_suffix_and_bad_text_is_refused() -> None:
    assert format_of("docs/a.MD") == "md" and format_of("x.htm") == "html"
    with pytest.raises(InvalidRequest):
        format_of("image.png")
    with pytest.raises(InvalidRequest):
        parse(b"\xff\xfe\xfa", "txt")
