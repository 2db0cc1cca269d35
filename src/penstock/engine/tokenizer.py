"""Text to token ids and back, over a `tokenizers.Tokenizer`, plus streaming detokenization."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gguf import TokenType
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from penstock.errors import ConfigError

# Tokens that close a chat turn; a chat model stops on them though its eos_token may differ.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm() -> pre_tokenizers.PreTokenizer:
    # SmolLM2's tokenizer.json: every digit on its own, then GPT-2's byte-level split.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()])


def _llama3() -> pre_tokenizers.PreTokenizer:
    split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
    return pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# llama.cpp's `tokenizer.ggml.pre` names, mapped to the pre-tokenizer the vocabulary was trained with.
PRE_TOKENIZERS = {
    "default": _byte_level,
    "gpt2": _byte_level,
    "smollm": _smollm,
    "llama-bpe": _llama3,
    "llama3": _llama3,
    "llama-v3": _llama3,
}


@dataclass(frozen=True, slots=True)
class ByteLevelVocab:
    """A byte-level BPE vocabulary as a GGUF stores it (`tokenizer.ggml.model == "gpt2"`)."""

    tokens: Sequence[str]
    token_types: Sequence[int]
    merges: Sequence[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    add_bos: bool


def build_byte_level_bpe(vocab: ByteLevelVocab) -> Backend:
    if vocab.pre not in PRE_TOKENIZERS:
        raise ConfigError(f"unsupported GGUF pre-tokenizer {vocab.pre!r}; known: {sorted(PRE_TOKENIZERS)}")
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    merges = [tuple(merge.split(" ", 1)) for merge in vocab.merges]
    backend = Backend(models.BPE(vocab=ids, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = PRE_TOKENIZERS[vocab.pre]()
    backend.decoder = decoders.ByteLevel()
    _add_whole_tokens(backend, vocab)
    if vocab.add_bos and vocab.bos_id is not None:
        bos = vocab.tokens[vocab.bos_id]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.bos_id)]
        )
    return backend


def _add_whole_tokens(backend: Backend, vocab: ByteLevelVocab) -> None:
    """Control tokens become special tokens, user-defined ones plain added tokens: both stay one id."""
    pairs = list(zip(vocab.tokens, vocab.token_types, strict=True))
    control = [t for t, kind in pairs if kind == TokenType.CONTROL]
    user_defined = [t for t, kind in pairs if kind == TokenType.USER_DEFINED]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user_defined])


class Tokenizer:
    """Encode and decode for one model; knows its BOS and the ids that end generation."""

    def __init__(self, backend: Backend, *, bos_id: int | None, eos_token_ids: tuple[int, ...]) -> None:
        self.backend = backend
        self.bos_id = bos_id
        self.eos_token_ids = eos_token_ids

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False, *, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. With `parse_special=False` a special token's text ("<|im_start|>") is
        encoded as the plain characters it consists of, never as the control token itself."""
        if parse_special:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        # The flag lives on the shared backend; encoding never awaits, so nothing runs in between.
        self.backend.encode_special_tokens = True
        try:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        finally:
            self.backend.encode_special_tokens = False

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


def stop_token_ids(tokenizer_eos: list[int], template: str | None, backend: Backend) -> tuple[int, ...]:
    """The model's eos ids plus the end-of-turn token its chat template writes, if any."""
    ids = list(tokenizer_eos)
    for token in END_OF_TURN_TOKENS:
        token_id = backend.token_to_id(token)
        if template and token in template and token_id is not None and token_id not in ids:
            ids.append(token_id)
    return tuple(ids)


class StreamDecoder:
    """Turns generated ids into text deltas that never end inside a UTF-8 character.

    Decodes a short window of recent ids, because a byte-level token may hold half a character and
    some decoders change a token's text depending on what precedes it.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window that gives context
        self._read = 0  # end of the ids already turned into text

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        seen = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if text.endswith("\ufffd") or len(text) <= len(seen):
            return ""  # an incomplete character, or nothing printable yet
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(seen) :]

    def flush(self) -> str:
        """What is left once generation ends, incomplete characters included."""
        seen = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(seen) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)
