"""The OpenAI wire protocol to a remote engine: one request's body, and its SSE stream read back as
TokenEvents. Every upstream is streamed (stream_options.include_usage), whatever the client asked, so a
first token can be waited for with its own timeout and a failure before it can still go elsewhere."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from penstock.errors import InvalidRequest, UpstreamFailed
from penstock.types import (
    ChatRequest,
    FinishReason,
    Message,
    Prompt,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
    ToolCall,
    Usage,
)

FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}


def request_body(prompt: Prompt, request: ChatRequest, model: str) -> tuple[str, dict[str, Any]]:
    """The path under the replica's base URL and the JSON body to send it."""
    sampling = request.sampling
    body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    body |= _sampling(sampling)
    if request.raw_prompt is not None:
        body["prompt"] = request.raw_prompt
        if sampling.logprobs:
            body["logprobs"] = sampling.top_logprobs
        return "/completions", body
    body["messages"] = [wire_message(m) for m in prompt.messages]
    if sampling.logprobs:
        body |= {"logprobs": True, "top_logprobs": sampling.top_logprobs}
    if request.calls_tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": json.loads(t.parameters)},
            }
            for t in request.tools
        ]
        choice = request.tool_choice
        body["tool_choice"] = (
            choice if choice in ("auto", "required") else {"type": "function", "function": {"name": choice}}
        )
    elif sampling.grammar is not None:
        schema = json.loads(sampling.grammar.source)
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        }
    return "/chat/completions", body


def _sampling(sampling: SamplingParams) -> dict[str, Any]:
    """OpenAI's parameters, and vLLM's extras only where they are set (OpenAI itself refuses them)."""
    sent: dict[str, Any] = {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "n": sampling.n,
    }
    optional = {
        "seed": sampling.seed,
        "stop": list(sampling.stop) or None,
        "presence_penalty": sampling.presence_penalty or None,
        "frequency_penalty": sampling.frequency_penalty or None,
        "top_k": sampling.top_k or None,
        "min_p": sampling.min_p or None,
        "repetition_penalty": sampling.repetition_penalty if sampling.repetition_penalty != 1 else None,
        "stop_token_ids": list(sampling.stop_token_ids) or None,
        "ignore_eos": sampling.ignore_eos or None,
    }
    return sent | {k: v for k, v in optional.items() if v is not None}


def wire_message(message: Message) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def status_failure(deployment: str, status: int, detail: str) -> Exception:
    """What an upstream's error status means here: the client's mistake (400, 413, 422: the same anywhere)
    as an InvalidRequest quoting it, anything else a failure of that upstream the ladder may route around."""
    if status in (400, 413, 422):
        return InvalidRequest(f"deployment {deployment} refused the request: {detail}", code="upstream_refused")
    return UpstreamFailed(f"deployment {deployment} answered HTTP {status}: {detail}", kind=f"status_{status}")


@dataclass(frozen=True, slots=True)
class Embedded:
    """An embeddings answer: one vector per text, in order, and the upstream's count of their tokens."""

    vectors: list[list[float]]
    prompt_tokens: int | None  # None where it gave none


def embeddings_of(deployment: str, raw: bytes, texts: int) -> Embedded:
    """An upstream's /v1/embeddings body read strictly: a vector of numbers for each of the `texts`."""
    try:
        body = orjson.loads(raw)
        rows = sorted(body["data"], key=lambda row: row["index"])
        vectors = [[float(x) for x in row["embedding"]] for row in rows]
        usage = body.get("usage") or {}
        tokens = usage.get("prompt_tokens")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise UpstreamFailed(
            f"deployment {deployment} answered embeddings in an unknown shape", kind="protocol"
        ) from None
    widths = {len(v) for v in vectors}
    if len(vectors) != texts or [r["index"] for r in rows] != list(range(texts)) or len(widths) != 1:
        raise UpstreamFailed(
            f"deployment {deployment} answered {len(vectors)} embeddings of widths {sorted(widths)} for {texts} texts",
            kind="protocol",
        )
    plausible = isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0
    return Embedded(vectors, tokens if plausible else None)


def error_detail(raw: bytes) -> str:
    """The message of an OpenAI-shaped error body, else the start of the body."""
    try:
        return str(json.loads(raw)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return raw[:300].decode("utf-8", "replace")


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)  # call index -> [id, name, arguments]
    finish: TokenEvent | None = None


class StreamReader:
    """One upstream SSE stream, chunk by chunk: the events to pass on now, and at the end the finishing
    events (held until the usage chunk, which follows them) carrying the upstream's usage, or a count."""

    def __init__(self, deployment: str, chat: bool, count: Callable[[str], int], prompt_tokens: int) -> None:
        self._deployment = deployment
        self._chat = chat
        self._count = count
        self._prompt_tokens = prompt_tokens
        self._choices: dict[int, _Choice] = {}
        self._usage: Any = None
        self.done = False

    def line(self, line: bytes) -> list[TokenEvent]:
        if not line.startswith(b"data:"):
            return []  # comments, event names, blank separators
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return []
        try:
            chunk = orjson.loads(payload)
            return self._chunk(chunk)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:  # orjson's errors are ValueErrors
            raise self._protocol(f"an unreadable stream chunk ({type(exc).__name__})") from None

    def _chunk(self, chunk: dict[str, Any]) -> list[TokenEvent]:
        if "error" in chunk:
            raise UpstreamFailed(
                f"deployment {self._deployment} failed mid-stream: {error_detail(json.dumps(chunk).encode())}",
                kind="stream_error",
            )
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events = []
        for raw in chunk["choices"]:
            event = self._event(raw)
            if event is not None:
                events.append(event)
        return events

    def _event(self, raw: dict[str, Any]) -> TokenEvent | None:
        index = int(raw.get("index", 0))
        choice = self._choices.setdefault(index, _Choice())
        if self._chat:
            delta = raw.get("delta") or {}
            text = delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                _merge_call(choice.calls, call)
            logprobs = _chat_logprobs(raw.get("logprobs"))
        else:
            text, logprobs = raw.get("text") or "", _text_logprobs(raw.get("logprobs"))
        if not isinstance(text, str):
            raise TypeError("text")
        choice.text.append(text)
        reason = raw.get("finish_reason")
        event = TokenEvent(text, (), None, logprobs, index)
        if reason is None:
            return event if text or logprobs else None
        calls = tuple(ToolCall(i, n, a) for i, n, a in (choice.calls[k] for k in sorted(choice.calls)))
        finish = "tool_calls" if calls else FINISH_REASONS.get(reason, "stop")
        choice.finish = TokenEvent(text, (), finish, logprobs, index, calls)
        return None

    def finish(self, n: int) -> list[TokenEvent]:
        """The held finishing events, the last carrying the request's usage; the stream must be whole."""
        if not self.done or len([c for c in self._choices.values() if c.finish]) < n:
            raise self._protocol("a stream that ended before every choice finished")
        usage = self._checked_usage() or self._counted()
        finishes = [self._choices[i].finish for i in sorted(self._choices) if self._choices[i].finish]
        last = finishes[-1]
        assert last is not None
        finishes[-1] = TokenEvent(last.text, (), last.finish_reason, last.logprobs, last.index, last.tool_calls, usage)
        return [e for e in finishes if e is not None]

    def _checked_usage(self) -> Usage | None:
        """The upstream's count where it is plausible: whole, non-negative, and within a few times ours
        (tokenizers differ, not by that much); else None, and the request is counted here."""
        raw = self._usage
        try:
            prompt, completion = raw["prompt_tokens"], raw["completion_tokens"]
        except (TypeError, KeyError):
            return None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (prompt, completion)):
            return None
        counted = self._counted()
        if prompt > 4 * counted.prompt_tokens + 64 or completion > 4 * counted.completion_tokens + 64:
            return None
        if completion == 0 and counted.completion_tokens > 0:
            return None
        return Usage(prompt, completion)

    def _counted(self) -> Usage:
        return Usage(self._prompt_tokens, sum(self._count("".join(c.text)) for c in self._choices.values()))

    def _protocol(self, what: str) -> UpstreamFailed:
        return UpstreamFailed(f"deployment {self._deployment} sent {what}", kind="protocol")


def _merge_call(calls: dict[int, list[str]], delta: dict[str, Any]) -> None:
    """OpenAI streams a tool call in pieces: its id and name once, its arguments in fragments."""
    slot = calls.setdefault(int(delta.get("index", len(calls))), ["", "", ""])
    function = delta.get("function") or {}
    slot[0] = delta.get("id") or slot[0]
    slot[1] = function.get("name") or slot[1]
    slot[2] += function.get("arguments") or ""


def _chat_logprobs(raw: dict[str, Any] | None) -> tuple[TokenLogprob, ...]:
    if not raw:
        return ()
    return tuple(
        TokenLogprob(
            t["token"],
            float(t["logprob"]),
            tuple((x["token"], float(x["logprob"])) for x in t.get("top_logprobs") or ()),
        )
        for t in raw.get("content") or ()
    )


def _text_logprobs(raw: dict[str, Any] | None) -> tuple[TokenLogprob, ...]:
    if not raw:
        return ()
    tops = raw.get("top_logprobs") or [{}] * len(raw["tokens"])
    return tuple(
        TokenLogprob(token, float(lp), tuple((k, float(v)) for k, v in (top or {}).items()))
        for token, lp, top in zip(raw["tokens"], raw["token_logprobs"], tops, strict=False)
    )
