"""Our GGUF-built tokenizer against transformers' tokenizer for the same file."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penstock.engine.loader import LoadedModel
from penstock.engine.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "hello 12345 world 2024-06-01 3.14159 1,000,000",
    "x = [i**2 for i in range(10)]  # squares\n\tprint(x)",
    "def f(a, b):\n    return a + b\n\n\n",
    "    leading spaces and trailing   ",
    "tabs\t\tand\r\nwindows\r\nlines",
    "Ünïcödé: café, naïve, Straße, ﬁ ligature, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "emoji 🤖🎉👩‍👩‍👧 and flags 🇫🇷",
    "full-width \uff11\uff12\uff13 and 1st 2nd",
    "I'm, you're, we'll, they'd, it's, DON'T, I'LL",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "",
    " ",
    "a" * 50 + " " * 17 + "b",
    '{"json": true, "list": [1, 2, 3], "nested": {"k": null}}',
    "https://example.com/path?q=1&r=two#frag",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(loaded: LoadedModel, hf_tokenizer: Any, text: str) -> None:
    assert loaded.tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)


def test_every_numeral_is_its_own_piece(loaded: LoadedModel) -> None:
    # SmolLM2's tokenizer.json and llama.cpp's "smollm" split off every Unicode number (\p{N}) before
    # byte-level BPE. transformers' GGUF converter skips that step, so it differs on " ²" or " ½".
    tokenizer = loaded.tokenizer
    for numeral in ["7", "²", "½", "٣", "Ⅻ"]:
        assert tokenizer.encode(f"a {numeral}") == tokenizer.encode("a ") + tokenizer.encode(numeral)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips(loaded: LoadedModel, text: str) -> None:
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(text)) == text


@pytest.mark.parametrize("token", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
def test_special_tokens_are_single_ids(loaded: LoadedModel, token: str) -> None:
    ids = loaded.tokenizer.encode(f"a{token}b")
    assert len(ids) == 3 and ids[1] == loaded.tokenizer.token_id(token)


def test_ids_and_sizes(loaded: LoadedModel) -> None:
    tokenizer = loaded.tokenizer
    assert tokenizer.vocab_size == loaded.args.vocab_size == 49152
    assert tokenizer.bos_id == tokenizer.token_id("<|im_start|>")
    assert tokenizer.token_id("<|im_end|>") in tokenizer.eos_token_ids
    assert tokenizer.encode("hi", add_special_tokens=True) == tokenizer.encode("hi")  # the GGUF adds no BOS


def stream(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    decoder = tokenizer.stream_decoder()
    return [decoder.push(token) for token in ids] + [decoder.flush()]


def test_stream_decoder_never_splits_a_character(loaded: LoadedModel) -> None:
    text = "🤖 日本語 🇫🇷 ok"
    deltas = stream(loaded.tokenizer, loaded.tokenizer.encode(text))
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == text
    assert deltas[0] == ""  # the robot's first byte-level token is only part of the character


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_stream_decoder_deltas_add_up_to_the_text(loaded: LoadedModel, text: str) -> None:
    # Compared with decode, not with the text: bytes the vocabulary lacks (e.g. "\x16") encode to nothing.
    ids = loaded.tokenizer.encode(text)
    assert "".join(stream(loaded.tokenizer, ids)) == loaded.tokenizer.decode(ids)
