"""Tools in the prompt and in the grammar: what the model is told it may call, and how it must write a call.

Calls use the Hermes convention that open chat models are trained on: a `<tool_call>` block holding
`{"name": ..., "arguments": {...}}`. A model whose chat template renders tools itself could take
them there; the shipped models' templates do not, so the tools go into the system message.
While decoding, a grammar holds the model to that format and each tool's parameter schema: with
tool_choice "auto" free text may come first and a call is checked from its opening tag on; with
"required" or a named tool the whole answer is one call.
"""

from __future__ import annotations

import json
from dataclasses import replace

from penstock.errors import InvalidRequest
from penstock.tool_format import CALL_CLOSE, CALL_OPEN, render_call
from penstock.types import JSON_LAYOUT, ChatRequest, Grammar, Message, Tool

_INSTRUCTIONS = (
    "You may call functions to help with the user's request. The functions, as JSON schemas:\n"
    "{tools}\n"
    "To call one, answer with a JSON object naming it and giving its arguments, inside tags:\n"
    f'{CALL_OPEN}\n{{"name": <function name>, "arguments": <arguments object>}}\n{CALL_CLOSE}'
)


def prompt_messages(request: ChatRequest) -> tuple[Message, ...]:
    """The conversation as the model reads it: tools described up front, earlier calls written out."""
    messages = tuple(_as_text(m) for m in request.messages)
    if not request.calls_tools:
        return messages
    offered = [t for t in request.tools if request.tool_choice in ("auto", "required", t.name)]
    described = _INSTRUCTIONS.replace("{tools}", "\n".join(_describe(t) for t in offered))
    if messages and messages[0].role == "system":
        return (Message("system", f"{messages[0].content}\n\n{described}"), *messages[1:])
    return (Message("system", described), *messages)


def output_grammar(request: ChatRequest) -> Grammar | None:
    """What decoding must follow: the tool-call format, the client's own grammar, or both at once."""
    answer = request.sampling.grammar
    if not request.calls_tools:
        return answer
    if request.tool_choice == "auto":
        if answer is not None and answer.kind != "json_schema":
            raise InvalidRequest("tools with tool_choice auto combine only with a JSON response_format", param="tools")
        return Grammar("lark", _auto_lark(request.tools, answer.source if answer else None))
    chosen = [t for t in request.tools if request.tool_choice in ("required", t.name)]
    return Grammar("json_schema", json.dumps(_call_schema(chosen)))


def _as_text(message: Message) -> Message:
    """An assistant turn's earlier calls become the text the model would have written for them."""
    if not message.tool_calls:
        return message
    calls = "\n".join(render_call(c) for c in message.tool_calls)
    return replace(message, content=f"{message.content}\n{calls}".strip(), tool_calls=())


def _describe(tool: Tool) -> str:
    return json.dumps({"name": tool.name, "description": tool.description, "parameters": json.loads(tool.parameters)})


def _call_schema(tools: list[Tool]) -> dict[str, object]:
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": json.loads(t.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": JSON_LAYOUT}  # a schema inside a Lark grammar takes its options inline


def _auto_lark(tools: tuple[Tool, ...], answer_schema: str | None) -> str:
    """Free text (or, with a JSON response_format, one JSON answer) unless the model calls tools."""
    call = f'%json {json.dumps(_call_schema(list(tools)))} "\\n{CALL_CLOSE}"'
    if answer_schema is not None:
        return f'start: %json {answer_schema} | call+\ncall: "{CALL_OPEN}\\n" {call} "\\n"?\n'
    # TEXT never runs into a call: `head` is lazy, so the text ends at the first "<tool_call>".
    return f'start: call* TEXT\ncall: head "\\n" {call}\nhead[lazy]: TEXT "{CALL_OPEN}"\nTEXT: /(.|\\n)*/\n'
