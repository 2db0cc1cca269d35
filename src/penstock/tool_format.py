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

    `bare`: the text is one call's JSON without tags (tool_choice required or named).
    """
    stripped = text.strip()
    bodies = [stripped] if bare else _BLOCK.findall(stripped)
    if not bodies or (not bare and _BLOCK.sub("", stripped).strip()):
        return ()  # text around the calls would be lost: leave it all as text
    calls = [_call(body, schemas) for body in bodies]
    return tuple(c for c in calls if c is not None) if all(calls) else ()


def _call(body: str, schemas: Mapping[str, Mapping[str, Any]]) -> ToolCall | None:
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or call.get("name") not in schemas or not isinstance(call.get("arguments"), dict):
        return None
    try:
        jsonschema.validate(call["arguments"], schemas[call["name"]])
    except jsonschema.ValidationError:
        return None
    return ToolCall(f"call_{secrets.token_hex(12)}", call["name"], json.dumps(call["arguments"]))
