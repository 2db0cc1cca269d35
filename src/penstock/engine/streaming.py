"""Turn sampled tokens into the TokenEvents a client sees: text deltas, stops, finish reasons."""

from __future__ import annotations

from penstock.engine.sampler import Logprob
from penstock.engine.stop_strings import StopStrings
from penstock.engine.tokenizer import Tokenizer
from penstock.types import FinishReason, SamplingParams, TokenEvent, TokenLogprob


class EventBuilder:
    """Per request: detokenizes incrementally and holds text back while a stop string may be forming."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams, index: int = 0) -> None:
        self._index = index
        self._tokenizer = tokenizer
        self._decoder = tokenizer.stream_decoder()
        self._stops = StopStrings(params.stop)
        eos = () if params.ignore_eos else tokenizer.eos_token_ids
        self._stop_ids = frozenset(params.stop_token_ids) | frozenset(eos)

    def event(self, token: int, *, last: bool, logprob: Logprob | None = None) -> TokenEvent:
        """The event for one sampled token; `last` when the token budget is spent."""
        text, finish = self._text(token, last)
        return TokenEvent(text, (token,), finish, (self._logprob(logprob),) if logprob else (), self._index)

    def _logprob(self, sampled: Logprob) -> TokenLogprob:
        top = tuple((self._token(t), lp) for t, lp in sampled.top)
        return TokenLogprob(self._token(sampled.token_id), sampled.logprob, top)

    def _token(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])

    def _text(self, token: int, last: bool) -> tuple[str, FinishReason | None]:
        if token in self._stop_ids:
            return self._finish()[0], "stop"
        text, stopped = self._stops.push(self._decoder.push(token))
        if stopped:
            return text, "stop"
        if last:
            tail, stopped = self._finish()
            return text + tail, "stop" if stopped else "length"
        return text, None

    def _finish(self) -> tuple[str, bool]:
        """Everything still held back, and whether it completes a stop string after all."""
        text, stopped = self._stops.push(self._decoder.flush())
        return (text, True) if stopped else (text + self._stops.flush(), False)
