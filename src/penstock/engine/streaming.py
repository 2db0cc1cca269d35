"""Turn sampled tokens into the TokenEvents a client sees: text deltas, stops, finish reasons."""

from __future__ import annotations

from penstock.engine.stop_strings import StopStrings
from penstock.engine.tokenizer import Tokenizer
from penstock.types import SamplingParams, TokenEvent


class EventBuilder:
    """Per request: detokenizes incrementally and holds text back while a stop string may be forming."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams) -> None:
        self._decoder = tokenizer.stream_decoder()
        self._stops = StopStrings(params.stop)
        self._stop_ids = frozenset(params.stop_token_ids) | frozenset(tokenizer.eos_token_ids)

    def event(self, token: int, *, last: bool) -> TokenEvent:
        """The event for one sampled token; `last` when the token budget is spent."""
        if token in self._stop_ids:
            return TokenEvent(self._finish()[0], (token,), "stop")
        text, stopped = self._stops.push(self._decoder.push(token))
        if stopped:
            return TokenEvent(text, (token,), "stop")
        if last:
            tail, stopped = self._finish()
            return TokenEvent(text + tail, (token,), "stop" if stopped else "length")
        return TokenEvent(text, (token,))

    def _finish(self) -> tuple[str, bool]:
        """Everything still held back, and whether it completes a stop string after all."""
        text, stopped = self._stops.push(self._decoder.flush())
        return (text, True) if stopped else (text + self._stops.flush(), False)
