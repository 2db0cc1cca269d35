"""How a tool call looks in the model's text (the Hermes convention), written and read back.

The context builder writes earlier calls this way and tells the model to; post-processing reads the
model's calls back out. One module, so the two can never disagree.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

import jsonschema

from penstock.types import ToolCall

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)


def render_call(call: ToolCall) -> str:
    return f'{CALL_OPEN}\n{{"name": {json.dumps(call.name)}, "arguments": {call.arguments}}}\n{CALL_CLOSE}'


def parse_calls(text: str, schemas: Mapping[str, Mapping[str, Any]], *, bare: bool) -> tuple[ToolCall, ...]:
    """Every call in `text`, or none if any is malformed, names an unknown tool or breaks its schema.

    `bare`: the text is all calls: one call's JSON without tags (what tool_choice required or named
    holds the engine to), or tagged calls (what an upstream told of tools in its prompt writes).
    """
    bodies = _bodies(text, bare=bare)
    if bodies is None or any(_problem(body, schemas) for body in bodies):
        return ()
    calls = [json.loads(body) for body in bodies]
    return tuple(ToolCall(f"call_{secrets.token_hex(12)}", c["name"], json.dumps(c["arguments"])) for c in calls)


def call_problem(text: str, schemas: Mapping[str, Mapping[str, Any]], *, bare: bool) -> str | None:
    """Why parse_calls finds no calls in `text`, in words a model can act on; None when it finds them."""
    bodies = _bodies(text, bare=bare)
    if bodies is None:
        return f"write only the calls, each inside {CALL_OPEN} {CALL_CLOSE} tags, with no other text among them"
    return next((problem for body in bodies if (problem := _problem(body, schemas))), None)


def _bodies(text: str, *, bare: bool) -> list[str] | None:
    """The calls' JSON texts; None when text stands around tagged calls (it would be lost)."""
    stripped = text.strip()
    tagged = _BLOCK.findall(stripped)
    if tagged and not _BLOCK.sub("", stripped).strip():
        return tagged
    if bare and not tagged:
        return [stripped]
    return None


def _problem(body: str, schemas: Mapping[str, Mapping[str, Any]]) -> str | None:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"a call is not JSON ({exc.msg})"
    if not isinstance(call, dict) or not isinstance(call.get("arguments"), dict):
        return 'a call is a JSON object {"name": <function name>, "arguments": <arguments object>}'
    name = call.get("name")
    if name not in schemas:
        return f"there is no function {json.dumps(name)}; the functions are {', '.join(sorted(schemas))}"
    schema = schemas[name]
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(call["arguments"])
    )
    return f"the arguments of {name} do not match its schema: {error.message[:300]}" if error else None
