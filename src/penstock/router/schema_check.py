"""JSON-schema answers from an upstream that cannot constrain its own decoding (`structured_output:
validate`): the schema is stated in the conversation, each answer is checked with jsonschema, and a
wrong one is asked again once with what was wrong. The outcome (valid, repaired, invalid) is counted."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema

from penstock.types import Message, Prompt, TokenEvent

INSTRUCTION = "Answer with one JSON value only, no other text, matching this JSON schema:\n{schema}"
RETRY = "That answer does not match the JSON schema: {error}. Answer again with the corrected JSON only."


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
    for index in sorted({e.index for e in events}):
        text = "".join(e.text for e in events if e.index == index)
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"it is not JSON ({exc.msg})"
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            return error.message[:300]
    return None


def asked_again(prompt: Prompt, events: list[TokenEvent], error: str) -> Prompt:
    """The conversation with the wrong answer and what was wrong with it, to answer once more."""
    answer = "".join(e.text for e in events if e.index == 0)
    again = (Message("assistant", answer), Message("user", RETRY.format(error=error)))
    return replace(prompt, messages=(*prompt.messages, *again))
