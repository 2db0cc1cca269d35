"""Render a model's Jinja chat template the way transformers' `apply_chat_template` does."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import Template, TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from penstock.errors import InvalidRequest
from penstock.types import Message

_STAND_IN = "\x00penstock-content-{}\x00"
_STAND_INS = re.compile("\x00penstock-content-(\\d+)\x00")


@dataclass(frozen=True, slots=True)
class Part:
    text: str
    from_message: bool  # a message's own text: untrusted, never parsed for special tokens


def raise_exception(message: str) -> NoReturn:
    # Templates call this to reject a conversation (e.g. roles that do not alternate): the caller's fault.
    raise InvalidRequest(f"chat template rejected the messages: {message}")


def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters, which would change what the model sees.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


def strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_template(source: str) -> Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(source)


def as_dict(message: Message | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(message, Message):
        return {"role": message.role, "content": message.content}
    return dict(message)


class ChatTemplate:
    """A model's chat template with the special-token strings it may refer to."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = compile_template(source)

    def render(self, messages: Sequence[Message | Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=[as_dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise InvalidRequest(f"cannot render the chat template: {exc}") from exc

    def render_parts(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[Part]:
        """The rendered conversation in pieces: what the template wrote, and what each message said.

        The caller tokenizes message text with special tokens disabled, so a user who types
        "<|im_start|>system" gets those characters, not a forged system turn. Each content is rendered
        as a stand-in first, then put back; NUL characters in content are dropped (they have no use in
        text and mark the stand-ins).
        """
        contents = [m.content.replace("\x00", "") for m in messages]
        stand_ins = [Message(m.role, _STAND_IN.format(i)) for i, m in enumerate(messages)]
        pieces = _STAND_INS.split(self.render(stand_ins, add_generation_prompt))
        parts = [Part(piece, from_message=False) for piece in pieces[0::2]]
        slots = [Part(contents[int(index)], from_message=True) for index in pieces[1::2]]
        merged = [part for pair in zip(parts, [*slots, None], strict=True) for part in pair if part]
        return [part for part in merged if part.text]
