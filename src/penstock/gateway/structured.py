"""Structured output and tools, from OpenAI's request fields to the pipeline's Grammar and Tool values.

Every schema is checked here, before anything expensive: a malformed one is the client's 400. The
check (jsonschema's, against its metaschema) is Python walking every node, about 50 us a node: a
1 MB schema took 5.3 s. So a request's schemas together hold at most MAX_SCHEMA_NODES values (as
OpenAI bounds a schema's properties) and nest at most MAX_SCHEMA_DEPTH deep, which keeps the check
within a few hundred milliseconds, and the gateway runs a request with schemas off the event loop.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from penstock.errors import InvalidRequest
from penstock.gateway.schemas import ChatCompletionRequest, ChatMessageIn, SamplingFields
from penstock.types import Grammar, Message, Tool, ToolCall

# JSON levels a schema may nest (objects and lists): real schemas use a handful. jsonschema checks a
# schema recursively, and one ~100 properties deep overflowed Python's stack (a 500, not the 400 it is).
MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_NODES = 5000  # values in all of a request's schemas together (OpenAI: 5,000 properties)


def carries_schemas(body: SamplingFields) -> bool:
    """Whether converting this request checks JSON schemas (worth a thread of its own)."""
    fmt = getattr(body, "response_format", None)
    return bool(getattr(body, "tools", None) or body.guided_json or (fmt is not None and fmt.type == "json_schema"))


def check_schema_sizes(body: SamplingFields) -> None:
    """Each schema's depth, and all the request's schemas' values together, within bounds."""
    fmt = getattr(body, "response_format", None)
    schemas = [("guided_json", body.guided_json)]
    if fmt is not None and fmt.json_schema is not None:
        schemas.append(("response_format", fmt.json_schema.schema_))
    schemas += [("tools", t.function.parameters) for t in getattr(body, "tools", None) or []]
    nodes = 0
    for param, schema in schemas:
        depth, count = json_shape(schema)
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequest(
                f"{param} nests deeper than {MAX_SCHEMA_DEPTH} levels", param=param, code="schema_too_deep"
            )
        nodes += count
        if nodes > MAX_SCHEMA_NODES:
            raise InvalidRequest(
                f"the request's schemas hold more than {MAX_SCHEMA_NODES} values", param=param, code="schema_too_large"
            )


def output_grammar(body: SamplingFields) -> Grammar | None:
    """The grammar the answer must follow: response_format, or one of vLLM's guided_* fields."""
    found = [(param, g) for param, g in _grammars(body) if g is not None]
    if len(found) > 1:
        raise InvalidRequest(f"give at most one of {', '.join(p for p, _ in found)}", param=found[1][0])
    return found[0][1] if found else None


def _grammars(body: SamplingFields) -> list[tuple[str, Grammar | None]]:
    fmt = getattr(body, "response_format", None)  # chat completions only
    from_format = None
    if fmt is not None and fmt.type == "json_object":
        from_format = Grammar("json_schema", json.dumps({"type": "object"}))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise InvalidRequest("response_format json_schema needs a json_schema object", param="response_format")
        from_format = _schema_grammar(fmt.json_schema.schema_, "response_format")
    return [
        ("response_format", from_format),
        ("guided_json", body.guided_json and _schema_grammar(body.guided_json, "guided_json")),
        ("guided_regex", body.guided_regex and _regex_grammar(body.guided_regex)),
        ("guided_choice", body.guided_choice and Grammar("regex", "|".join(map(re.escape, body.guided_choice)))),
    ]


def _schema_grammar(schema: dict[str, Any], param: str) -> Grammar:
    check_schema(schema, param)
    return Grammar("json_schema", json.dumps(schema))


def _regex_grammar(pattern: str) -> Grammar:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidRequest(f"guided_regex is not a valid regular expression: {exc}", param="guided_regex") from exc
    return Grammar("regex", pattern)


def check_schema(schema: dict[str, Any], param: str) -> None:
    """Against its metaschema; its size was bounded first (check_schema_sizes)."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"{param} is not a valid JSON schema: {exc.message}", param=param) from exc


def json_shape(value: object) -> tuple[int, int]:
    """How many objects and lists deep `value` nests, and how many values it holds, without recursion."""
    deepest, count, level = 0, 0, [(value, 1)]
    while level:
        node, depth = level.pop()
        count += 1
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            level.extend((child, depth + 1) for child in children)
    return deepest, count


def tools_of(body: ChatCompletionRequest) -> tuple[tuple[Tool, ...], str]:
    """The offered tools and the tool_choice ("none", "auto", "required" or a tool's name)."""
    specs = body.tools or []
    names = [t.function.name for t in specs]
    if len(set(names)) < len(names):
        raise InvalidRequest("tool names must be unique", param="tools")
    choice = body.tool_choice
    if choice is not None and not specs and choice != "none":
        raise InvalidRequest("tool_choice needs tools", param="tool_choice")
    named = None if choice is None or isinstance(choice, str) else choice.function.name
    if named is not None and named not in names:
        raise InvalidRequest(f"tool_choice names '{named}', which is not among the tools", param="tool_choice")
    tools = []
    for spec in specs:
        parameters = spec.function.parameters or {"type": "object"}
        check_schema(parameters, "tools")
        tools.append(Tool(spec.function.name, spec.function.description or "", json.dumps(parameters)))
    return tuple(tools), named or (choice if isinstance(choice, str) else "auto")


def message_of(message: ChatMessageIn) -> Message:
    # OpenAI's "developer" role is the newer name for "system".
    role = "system" if message.role == "developer" else message.role
    calls = tuple(ToolCall(c.id, c.function.name, _arguments(c.function.arguments)) for c in message.tool_calls or [])
    return Message(role, message.text(), tool_calls=calls, tool_call_id=message.tool_call_id)


def _arguments(text: str) -> str:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest("a tool call's arguments must be JSON text", param="messages") from exc
    return text
