from penstock.evaluation.manpages import build, parse

PAGE = (
    r""".\" a comment
.TH GREP 1
.SH NAME
grep, egrep \- print lines that match patterns
.SH SYNOPSIS
.B grep
[\fIOPTION\fR...] \fIPATTERNS\fR
.SH DESCRIPTION
.B grep
searches for PATTERNS in each FILE.
"""
    + "More text about matching lines in files.\n" * 20
)


def test_a_man_page_becomes_its_description_and_its_text_without_the_name() -> None:
    page = parse("grep.1", PAGE)
    assert page is not None
    assert page.description == "print lines that match patterns"
    assert "print lines that match patterns" not in page.body
    assert "[OPTION...] PATTERNS" in page.body and "\\f" not in page.body


def test_a_redirect_or_a_stub_is_no_page() -> None:
    assert parse("egrep.1", ".so man1/grep.1\n") is None
    assert parse("tiny.1", ".SH NAME\ntiny \\- does little\n.SH DESCRIPTION\nLittle.\n") is None


def test_the_installed_pages_give_a_seeded_labeled_set() -> None:
    first, again = build(limit=30, seed=3), build(limit=30, seed=3)
    assert first == again and len(first.documents) == 30
    assert all(q.relevant == {d.id} for q, d in zip(first.queries, first.documents, strict=True))
