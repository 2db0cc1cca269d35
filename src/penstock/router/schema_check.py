"""JSON-schema answers and tool calls from an upstream that can neither constrain its own decoding nor take
tools (`structured_output: validate`): the schema, or the tools, are stated in the conversation (the tools
as the built-in engine's prompt states them), each answer is checked with jsonschema, and a wrong one is
asked again once with what was wrong. The outcome (valid, repaired, invalid) is counted. Calls come back
as text, which the pipeline reads as it reads the engine's."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema

from penstock.context.tools import prompt_messages
from penstock.tool_format import CALL_OPEN, call_problem
from penstock.types import ChatRequest, Message, Prompt, TokenEvent

INSTRUCTION = "Answer with one JSON value only, no other text, matching this JSON schema:\n{schema}"
SCHEMA_RETRY = "That answer does not match the JSON schema: {error}. Answer again with the corrected JSON only."
CALL_RETRY = "That tool call is not valid: {error}. Answer again, with the call corrected."


def with_schema(prompt: Prompt, schema: str) -> Prompt:
    """The conversation with the schema stated at the end of its system message."""
    said = INSTRUCTION.format(schema=schema)
    messages = prompt.messages
    if messages and messages[0].role == "system":
        messages = (replace(messages[0], content=f"{messages[0].content}\n\n{said}"), *messages[1:])
    else:
        messages = (Message("system", said), *messages)
    return replace(prompt, messages=messages)


def schema_error(events: list[TokenEvent], schema: str) -> str | None:
    """What is wrong with the first answer that is wrong (every choice is checked); None if all are right."""
    validator = jsonschema.validators.validator_for(json.loads(schema))(json.loads(schema))
    for text in _answers(events):
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"it is not JSON ({exc.msg})"
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            return error.message[:300]
    return None


def with_tools(prompt: Prompt, request: ChatRequest) -> Prompt:
    """The conversation with the tools described and earlier calls and their results written as text, for
    an upstream that knows no `tools`, `tool_calls` or tool turns."""
    described = prompt_messages(replace(request, messages=prompt.messages))
    return replace(prompt, messages=tuple(_result_as_text(m) for m in described))


def calls_error(events: list[TokenEvent], request: ChatRequest) -> str | None:
    """What is wrong with the first answer whose calls are wrong; None if all are right. With tool_choice
    auto an answer may be prose, and from a call's opening tag on it must be calls only."""
    offered = [t for t in request.tools if request.tool_choice in ("auto", "required", t.name)]
    schemas = {t.name: json.loads(t.parameters) for t in offered}
    bare = request.tool_choice != "auto"
    for text in _answers(events):
        at = 0 if bare else text.find(CALL_OPEN)
        problem = call_problem(text[at:], schemas, bare=bare) if at >= 0 else None
        if problem is not None:
            return problem
    return None


def asked_again(prompt: Prompt, events: list[TokenEvent], correction: str) -> Prompt:
    """The conversation with the wrong answer and what was wrong with it (`correction`), to answer once more."""
    answer = "".join(e.text for e in events if e.index == 0)
    again = (Message("assistant", answer), Message("user", correction))
    return replace(prompt, messages=(*prompt.messages, *again))


def _answers(events: list[TokenEvent]) -> list[str]:
    """Each choice's whole text, in choice order."""
    return ["".join(e.text for e in events if e.index == index) for index in sorted({e.index for e in events})]


def _result_as_text(message: Message) -> Message:
    if message.role != "tool":
        return message
    return Message("user", f"<tool_response>\n{message.content}\n</tool_response>")
