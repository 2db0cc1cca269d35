import json

import pytest

from penstock.context.tools import output_grammar, prompt_messages
from penstock.errors import InvalidRequest
from penstock.types import Caller, ChatRequest, Grammar, Message, SamplingParams, Tool, ToolCall

WEATHER = Tool("get_weather", "The weather in a city", json.dumps({"type": "object", "properties": {"city": {}}}))
CLOCK = Tool("get_time", "The time in a city", json.dumps({"type": "object"}))


def request(*messages: Message, tool_choice: str = "auto", grammar: Grammar | None = None) -> ChatRequest:
    return ChatRequest(
        "r",
        "m",
        messages,
        SamplingParams(grammar=grammar),
        Caller("k", "t"),
        tools=(WEATHER, CLOCK),
        tool_choice=tool_choice,
    )


def test_tools_are_described_in_the_system_message() -> None:
    messages = prompt_messages(request(Message("system", "Be brief."), Message("user", "Weather in Oslo?")))
    assert [m.role for m in messages] == ["system", "user"]
    assert messages[0].content.startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in messages[0].content and "<tool_call>" in messages[0].content


def test_a_named_tool_choice_describes_only_that_tool() -> None:
    messages = prompt_messages(request(Message("user", "Time?"), tool_choice="get_time"))
    assert messages[0].role == "system"
    assert "get_time" in messages[0].content and "get_weather" not in messages[0].content


def test_tool_choice_none_leaves_the_conversation_as_it_is() -> None:
    assert prompt_messages(request(Message("user", "hi"), tool_choice="none")) == (Message("user", "hi"),)
    assert output_grammar(request(Message("user", "hi"), tool_choice="none")) is None


def test_earlier_calls_are_written_out_as_the_model_would_have() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
    turns = (Message("user", "Weather?"), Message("assistant", "", tool_calls=(call,)), Message("tool", "-3 C"))
    messages = prompt_messages(request(*turns, tool_choice="none"))
    assert messages[1] == Message(
        "assistant", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    assert messages[2] == Message("tool", "-3 C")


def test_the_grammar_follows_the_tool_choice() -> None:
    required = output_grammar(request(Message("user", "x"), tool_choice="required"))
    assert required is not None and required.kind == "json_schema"
    assert [o["properties"]["name"]["const"] for o in json.loads(required.source)["anyOf"]] == [
        "get_weather",
        "get_time",
    ]
    named = output_grammar(request(Message("user", "x"), tool_choice="get_time"))
    assert named is not None and json.loads(named.source)["properties"]["name"] == {"const": "get_time"}
    auto = output_grammar(request(Message("user", "x")))
    assert auto is not None and auto.kind == "lark" and "<tool_call>" in auto.source


def test_auto_tools_combine_with_a_json_answer_but_not_a_regex() -> None:
    answer = Grammar("json_schema", json.dumps({"type": "object"}))
    combined = output_grammar(request(Message("user", "x"), grammar=answer))
    assert combined is not None and combined.kind == "lark"
    with pytest.raises(InvalidRequest):
        output_grammar(request(Message("user", "x"), grammar=Grammar("regex", "a+")))
