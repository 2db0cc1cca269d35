import json

import pytest

from penstock.errors import UpstreamFailed
from penstock.router.upstream import StreamReader, request_body
from penstock.types import Caller, ChatRequest, Message, Prompt, SamplingParams, Tool, ToolCall, Usage


def chunk(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n".encode()


def reader() -> StreamReader:
    return StreamReader("d", chat=True, count=lambda text: len(text.split()), prompt_tokens=9)


def test_tool_calls_streamed_in_pieces_arrive_whole_on_the_last_event() -> None:
    stream = reader()
    pieces = [
        {"index": 0, "id": "call_1", "function": {"name": "weather", "arguments": '{"ci'}},
        {"index": 0, "function": {"arguments": 'ty": "Paris"}'}},
    ]
    for piece in pieces:
        assert stream.line(chunk({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]})) == []
    stream.line(chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}))
    stream.line(chunk({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 8}}))
    stream.line(b"data: [DONE]\n")
    (last,) = stream.finish(1)
    assert last.tool_calls == (ToolCall("call_1", "weather", '{"city": "Paris"}'),)
    assert last.finish_reason == "tool_calls" and last.usage == Usage(12, 8)


def test_text_streams_at_once_and_an_early_end_is_a_protocol_failure() -> None:
    stream = reader()
    (event,) = stream.line(chunk({"choices": [{"index": 0, "delta": {"content": "Hello there"}}]}))
    assert event.text == "Hello there" and event.finish_reason is None
    with pytest.raises(UpstreamFailed) as info:
        stream.finish(1)  # no [DONE], no finish_reason: the stream was cut
    assert info.value.kind == "protocol"
    with pytest.raises(UpstreamFailed):
        reader().line(b"data: {broken\n")
    with pytest.raises(UpstreamFailed) as mid:
        reader().line(chunk({"error": {"message": "engine died"}}))
    assert mid.value.kind == "stream_error"


def test_the_body_carries_native_tools_and_only_the_extras_that_are_set() -> None:
    tools = (Tool("weather", "Weather now", '{"type": "object"}'),)
    req = ChatRequest(
        request_id="r",
        model="chat",
        messages=(Message("user", "hi"),),
        sampling=SamplingParams(max_tokens=5, temperature=0, top_k=5),
        caller=Caller("k", "t"),
        tools=tools,
        tool_choice="weather",
    )
    path, body = request_body(Prompt("", (), messages=req.messages), req, "upstream-model")
    assert path == "/chat/completions"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["tools"][0]["function"]["name"] == "weather"
    assert body["top_k"] == 5 and "min_p" not in body and "repetition_penalty" not in body
    assert body["stream_options"] == {"include_usage": True}
