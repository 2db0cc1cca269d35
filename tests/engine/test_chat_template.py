from __future__ import annotations

import pytest

from penstock.engine.chat_template import ChatTemplate
from penstock.engine.loader import LoadedModel
from penstock.errors import InvalidRequest
from penstock.types import Message

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_chatml_with_the_default_system_prompt(loaded: LoadedModel) -> None:
    messages = [Message("user", "Hi!"), Message("assistant", "Hello, how can I help?")]
    assert loaded.chat_template.render(messages, add_generation_prompt=False) == (
        SYSTEM + "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello, how can I help?<|im_end|>\n"
    )


def test_generation_prompt_and_dict_messages(loaded: LoadedModel) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert loaded.chat_template.render(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_trim_and_lstrip_blocks_like_transformers() -> None:
    template = ChatTemplate("{% for m in messages %}\n    {% if m.content %}{{ m.content }}{% endif %}\n{% endfor %}")
    assert template.render([Message("user", "a"), Message("user", "b")]) == "ab"


def test_raise_exception_rejects_the_request() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        template.render([Message("user", "x")])


def test_the_sandbox_blocks_unsafe_access() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequest):
        template.render([Message("user", "x")])
