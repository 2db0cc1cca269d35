"""Gather a request's token events into its n choices."""

from __future__ import annotations

from collections.abc import Iterable

from penstock.types import Choice, TokenEvent


def collect_choices(events: Iterable[TokenEvent]) -> tuple[Choice, ...]:
    by_index: dict[int, list[TokenEvent]] = {}
    for event in events:
        by_index.setdefault(event.index, []).append(event)
    return tuple(_choice(index, by_index[index]) for index in sorted(by_index))


def _choice(index: int, events: list[TokenEvent]) -> Choice:
    return Choice(
        index=index,
        text="".join(e.text for e in events),
        finish_reason=events[-1].finish_reason or "stop",
        logprobs=tuple(lp for e in events for lp in e.logprobs),
        tool_calls=events[-1].tool_calls,
    )
