from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from penstock.engine.stop_strings import StopStrings


def feed(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    matcher, shown = StopStrings(stops), []
    for piece in pieces:
        text, stopped = matcher.push(piece)
        shown.append(text)
        if stopped:
            return "".join(shown), True
    return "".join(shown) + matcher.flush(), False


def test_text_is_held_back_while_it_may_start_a_stop() -> None:
    matcher = StopStrings(("END",))
    assert matcher.push("abcE") == ("abc", False)
    assert matcher.push("N") == ("", False)
    assert matcher.push("x") == ("ENx", False)


def test_a_stop_split_across_pieces_is_found() -> None:
    assert feed(("</answer>",), ["42 </an", "swer", "> more"]) == ("42 ", True)


def test_the_earliest_stop_wins() -> None:
    assert feed(("bb", "a"), ["xbba"]) == ("x", True)


def test_no_stops_passes_text_through() -> None:
    assert StopStrings(()).push("anything") == ("anything", False)


@given(st.lists(st.text(alphabet="abc", max_size=4), max_size=8), st.text(alphabet="abc", min_size=1, max_size=3))
def test_output_is_the_text_up_to_the_first_stop(pieces: list[str], stop: str) -> None:
    text = "".join(pieces)
    expected = text[: text.find(stop)] if stop in text else text
    assert feed((stop,), pieces) == (expected, stop in text)
