"""Read the model's tool calls out of its token stream, holding back the text that makes them up.

With tool_choice auto, text streams as usual until it may be starting a call tag; from the tag on it
is held, and at the end it becomes `tool_calls` (finish_reason "tool_calls") if every call parses and
matches its tool's schema, or is released as text if not. With a required or named tool the whole
answer is one call.
"""

from __future__ import annotations

import json
from dataclasses import replace

from penstock.tool_format import CALL_OPEN, parse_calls
from penstock.types import ChatRequest, TokenEvent


class ToolCallExtractor:
    def __init__(self, request: ChatRequest) -> None:
        self._schemas = {t.name: json.loads(t.parameters) for t in request.tools}
        self._bare = request.tool_choice != "auto"
        self._held: dict[int, str] = {}  # per choice: text not yet released
        self._calling: set[int] = set()  # choices past a call's opening tag

    def process(self, event: TokenEvent) -> TokenEvent:
        release, held = self._split(event.index, self._held.pop(event.index, "") + event.text)
        if event.finish_reason is None:
            self._held[event.index] = held
            return replace(event, text=release)
        calls = parse_calls(held, self._schemas, bare=self._bare) if held else ()
        if not calls:
            return replace(event, text=release + held)
        return replace(event, text=release, tool_calls=calls, finish_reason="tool_calls")

    def _split(self, index: int, text: str) -> tuple[str, str]:
        """What may be shown now, and what must wait because it is (or may become) a call."""
        if self._bare or index in self._calling:
            return "", text
        at = text.find(CALL_OPEN)
        if at >= 0:
            self._calling.add(index)
            return text[:at], text[at:]
        keep = next((k for k in range(min(len(text), len(CALL_OPEN) - 1), 0, -1) if CALL_OPEN.startswith(text[-k:])), 0)
        return text[: len(text) - keep], text[len(text) - keep :]
