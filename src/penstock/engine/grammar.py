"""Grammar-constrained decoding: a request's Grammar → the tokens its sequence may sample next.

llguidance compiles JSON schemas, regular expressions and Lark grammars against the model's own
vocabulary and computes each step's token mask (tens of microseconds for typical schemas). A
grammar is compiled once per distinct source and copied for every sequence that uses it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import llguidance
import numpy as np
import torch
from torch import Tensor

from penstock.engine.sequence import Sequence
from penstock.engine.tokenizer import Tokenizer
from penstock.errors import InvalidRequest
from penstock.types import JSON_LAYOUT, Grammar


def llguidance_grammar(grammar: Grammar) -> str:
    if grammar.kind == "json_schema":
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(grammar.source, defaults=JSON_LAYOUT)
        except ValueError as exc:
            raise InvalidRequest(f"the JSON schema is not a JSON object: {exc}", param="response_format") from exc
    if grammar.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(grammar.source)
    return llguidance.LLMatcher.grammar_from_lark(grammar.source)


class GrammarCompiler:
    """One model's grammars. Thread-safe: the gateway validates, the engine thread instantiates."""

    def __init__(self, tokenizer: Tokenizer, cache_size: int = 64) -> None:
        self._tokenizer = tokenizer
        self._cache_size = cache_size
        self._compiled: OrderedDict[Grammar, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._ll_tokenizer: llguidance.LLTokenizer | None = None

    def compile(self, grammar: Grammar) -> llguidance.LLMatcher:
        """A matcher at the grammar's start, to copy per sequence; an invalid grammar is the caller's 400."""
        with self._lock:
            if grammar in self._compiled:
                self._compiled.move_to_end(grammar)
                return self._compiled[grammar]
        matcher = llguidance.LLMatcher(self._vocabulary(), llguidance_grammar(grammar), log_level=0)
        if matcher.is_error():
            raise InvalidRequest(f"invalid {grammar.kind.replace('_', ' ')}: {matcher.get_error()}", param="grammar")
        with self._lock:
            self._compiled[grammar] = matcher
            while len(self._compiled) > self._cache_size:
                self._compiled.popitem(last=False)
        return matcher

    def mask(self, grammar: Grammar, vocab_size: int) -> GrammarMask:
        return GrammarMask(self.compile(grammar).deep_copy(), vocab_size, self._tokenizer.eos_token_ids)

    def _vocabulary(self) -> llguidance.LLTokenizer:
        # Built on first use (about half a second): most deployments never see a grammar.
        with self._lock:
            if self._ll_tokenizer is None:
                tok = self._tokenizer
                self._ll_tokenizer = llguidance.LLTokenizer(
                    tok.backend.to_str(), n_vocab=tok.vocab_size, eos_token=list(tok.eos_token_ids)
                )
            return self._ll_tokenizer


class GrammarMask:
    """A sequence's token mask (Sequence.token_mask): follows what it generated, allows what may come next.

    Once the grammar is complete only end-of-sequence tokens remain allowed, so the sequence stops.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, eos_ids: tuple[int, ...]) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size  # the model's logits width, which may exceed the tokenizer's
        self._eos_ids = eos_ids
        self._consumed = 0

    def __call__(self, seq: Sequence) -> Tensor | None:
        generated = seq.completion_ids
        if self._consumed < len(generated):
            self._matcher.consume_tokens(generated[self._consumed :])
            self._consumed = len(generated)
        allowed = np.zeros(self._vocab_size, dtype=bool)
        if self._matcher.is_error():
            # Only a token drawn without this mask gets here (none is); end the output rather than break the grammar.
            allowed[list(self._eos_ids)] = True
            return torch.from_numpy(allowed)
        bits = np.unpackbits(np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        width = min(self._vocab_size, bits.size)
        allowed[:width] = bits[:width]
        return torch.from_numpy(allowed)

    def fork(self) -> GrammarMask:
        copy = GrammarMask(self._matcher.deep_copy(), self._vocab_size, self._eos_ids)
        copy._consumed = self._consumed
        return copy
