import json

from penstock.postprocess.tool_calls import ToolCallExtractor
from penstock.types import Caller, ChatRequest, Message, SamplingParams, TokenEvent, Tool

ADD = Tool("add", "", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}))


def extractor(tool_choice: str = "auto") -> ToolCallExtractor:
    request = ChatRequest(
        "r", "m", (Message("user", "x"),), SamplingParams(), Caller("k", "t"), tools=(ADD,), tool_choice=tool_choice
    )
    return ToolCallExtractor(request)


def run(extract: ToolCallExtractor, pieces: list[str], finish: str = "stop") -> list[TokenEvent]:
    events = [TokenEvent(p, (i,)) for i, p in enumerate(pieces[:-1])]
    events.append(TokenEvent(pieces[-1], (len(pieces),), finish))  # type: ignore[arg-type]
    return [extract.process(e) for e in events]


def test_text_before_a_call_streams_and_the_call_is_held_back() -> None:
    pieces = ["Let me add. <to", "ol_call>\n", '{"name": "add", ', '"arguments": {"a": 2}}\n</tool_call>']
    out = run(extractor(), pieces)
    assert [e.text for e in out] == ["Let me add. ", "", "", ""]
    assert out[-1].finish_reason == "tool_calls"
    (call,) = out[-1].tool_calls
    assert call.name == "add" and json.loads(call.arguments) == {"a": 2} and call.id.startswith("call_")
    assert [e.token_ids for e in out] == [(0,), (1,), (2,), (4,)]  # usage still counts every token


def test_a_tag_prefix_that_goes_nowhere_is_released() -> None:
    out = run(extractor(), ["a <to", "ken> b"])
    assert "".join(e.text for e in out) == "a <token> b" and out[-1].finish_reason == "stop"


def test_a_call_breaking_its_schema_stays_text() -> None:
    raw = '<tool_call>\n{"name": "add", "arguments": {"a": "two"}}\n</tool_call>'
    out = run(extractor(), [raw])
    assert out[-1].text == raw and out[-1].tool_calls == () and out[-1].finish_reason == "stop"


def test_an_unknown_tool_or_broken_json_stays_text() -> None:
    for raw in ['<tool_call>\n{"name": "sub", "arguments": {}}\n</tool_call>', "<tool_call>\n{not json\n</tool_call>"]:
        assert run(extractor(), [raw])[-1].tool_calls == ()


def test_a_required_call_is_the_whole_answer() -> None:
    out = run(extractor("required"), ['{"name": "add", ', '"arguments": {"a": 5}}'])
    assert [e.text for e in out] == ["", ""]
    assert out[-1].finish_reason == "tool_calls" and out[-1].tool_calls[0].arguments == '{"a": 5}'


def test_a_call_cut_by_max_tokens_comes_back_as_text() -> None:
    out = run(extractor("required"), ['{"name": "add", ', '"argu'], finish="length")
    assert out[-1].text == '{"name": "add", "argu' and out[-1].finish_reason == "length"
