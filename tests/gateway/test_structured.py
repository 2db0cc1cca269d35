"""response_format, vLLM's guided_* fields and tools, end to end through the official SDK."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jsonschema
import openai
import pytest

from tests.gateway.conftest import ADMIN_KEY, MODEL, SdkFor
from tests.gateway.test_errors import assert_openai_error
from tests.gateway.test_keys import as_key, new_key

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": CITY},
}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


async def test_a_json_schema_response_format_gives_json_that_fits(sdk_for: SdkFor) -> None:
    sdk = sdk_for(ADMIN_KEY)
    answer = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a city and its country."}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": CITY}},
        temperature=0,
        max_tokens=60,
    )
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), CITY)


async def test_json_object_mode_gives_an_object(sdk_for: SdkFor) -> None:
    answer = await sdk_for(ADMIN_KEY).chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}, temperature=0, max_tokens=80
    )
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    else:  # cut by max_tokens: still an object's start, never prose
        assert (answer.choices[0].message.content or "").startswith("{")


async def test_guided_choice_picks_one_of_the_choices(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "messages": ASK, "temperature": 0, "guided_choice": ["sunny", "rainy", "cloudy"]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.json()["choices"][0]["message"]["content"] in ("sunny", "rainy", "cloudy")


async def test_a_required_tool_call_comes_back_as_tool_calls(sdk_for: SdkFor) -> None:
    answer = await sdk_for(ADMIN_KEY).chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER_TOOL, CLOCK_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    if call.function.name == "get_weather":
        jsonschema.validate(json.loads(call.function.arguments), CITY)
    assert answer.usage is not None and answer.usage.completion_tokens > 0


async def test_a_named_tool_is_the_one_called_and_streams_as_a_tool_call_delta(sdk_for: SdkFor) -> None:
    sdk = sdk_for(ADMIN_KEY)
    request = {
        "model": MODEL,
        "messages": ASK,
        "tools": [WEATHER_TOOL, CLOCK_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0,
        "max_tokens": 60,
    }
    whole = await sdk.chat.completions.create(**request)
    (call,) = whole.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), CITY)
    chunks = [chunk async for chunk in await sdk.chat.completions.create(**request, stream=True)]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert all(not d.content for d in deltas)  # nothing of the call leaks as text
    streamed = [tc for d in deltas for tc in d.tool_calls or []]
    assert [(tc.index, tc.function and tc.function.name) for tc in streamed] == [(0, "get_weather")]
    assert streamed[0].function is not None and streamed[0].function.arguments == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


async def test_a_conversation_with_a_tool_result_is_answered(sdk_for: SdkFor) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees Celsius."},
    ]
    answer = await sdk_for(ADMIN_KEY).chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_tokens=30
    )
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
            "response_format",
        ),
        ({"guided_regex": "(unclosed"}, "guided_regex"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]}, "tools"),
        ({"tools": [WEATHER_TOOL], "guided_regex": "a+"}, "tools"),
    ],
)
async def test_malformed_structure_is_a_400_naming_the_param(
    client: httpx.AsyncClient, extra: dict, param: str
) -> None:
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **extra})
    assert_openai_error(response, 400, param=param)


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": nested(100)}}}, None),
        ({"guided_json": nested(100)}, "guided_json"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": nested(100)}}]}, "tools"),
    ],
)
async def test_a_schema_nested_100_deep_is_a_400_not_a_500(
    client: httpx.AsyncClient, extra: dict, param: str | None
) -> None:
    """Audit finding 12: jsonschema's recursion overflowed the stack (a 500 and a ~150 KB traceback)."""
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **extra})
    assert assert_openai_error(response, 400, param=param or "response_format")["code"] == "schema_too_deep"
    shallow = {"model": MODEL, "messages": ASK, "max_tokens": 3, "guided_json": nested(20)}
    assert (await client.post("/v1/chat/completions", json=shallow)).status_code == 200


@pytest.mark.parametrize(
    "extra",
    [
        {"guided_regex": "(?=x)" + "a" * 400_000},
        {"guided_json": {"type": "string", "pattern": "(?=x)" + "a" * 400_000}},
    ],
)
async def test_a_grammar_error_does_not_echo_the_grammar(client: httpx.AsyncClient, extra: dict) -> None:
    """Audit finding 10: a grammar error returned the whole grammar (a 3.9 MB 400 body and log line)."""
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **extra})
    error = assert_openai_error(response, 400)
    assert len(response.content) < 2_000 and "more characters" in error["message"]


async def test_too_many_tools_or_too_large_schemas_are_refused_at_once(client: httpx.AsyncClient) -> None:
    """Audit finding 9: 20,500 empty tools (1 MB) blocked /healthz for 6.6 s while each was checked."""
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(20_500)]
    started = time.monotonic()
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "tools": tools})
    assert_openai_error(response, 400, param="tools")
    assert time.monotonic() - started < 2
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3_000)}}
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "guided_json": wide})
    assert assert_openai_error(response, 400, param="guided_json")["code"] == "schema_too_large"


async def test_schemas_are_checked_off_the_event_loop(client: httpx.AsyncClient) -> None:
    """The largest schema allowed takes a while to check; meanwhile the server answers others."""
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2_400)}}  # 4,803 values
    tool = {"type": "function", "function": {"name": "fill", "parameters": wide}}
    body = {"model": MODEL, "messages": ASK, "tools": [tool], "max_tokens": 1}
    heavy = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
    health = [(await client.get("/healthz")).status_code for _ in range(5)]
    assert health == [200] * 5 and not heavy.done()  # answered while the schema was still being checked
    # Described in the prompt, the tool does not fit the window: refused before its grammar is compiled.
    assert assert_openai_error(await heavy, 400, param="messages")["code"] == "context_length_exceeded"


async def test_a_key_may_only_offer_its_allowed_tools(client: httpx.AsyncClient, sdk_for: SdkFor) -> None:
    key = await new_key(client, tools=["get_time"])
    body = {"model": MODEL, "messages": ASK, "tools": [WEATHER_TOOL], "max_tokens": 1}
    response = await client.post("/v1/chat/completions", json=body, headers=as_key(key))
    assert assert_openai_error(response, 403, param="tools")["code"] == "tool_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        await sdk_for(key["key"]).chat.completions.create(**body)
