"""Hold back streamed text while it could still be the start of a stop string."""

from __future__ import annotations


class StopStrings:
    """Feed text deltas in; get back the text that is safe to show, and whether a stop string ended it."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        buffer = self._pending + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return buffer[: min(hits)], True
        keep = self._held_back(buffer)
        self._pending = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text

    def _held_back(self, buffer: str) -> int:
        """Length of the longest tail of `buffer` that begins some stop string."""
        for size in range(min(len(buffer), max(map(len, self._stops), default=0)), 0, -1):
            if any(s.startswith(buffer[-size:]) for s in self._stops):
                return size
        return 0
