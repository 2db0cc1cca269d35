"""Which retrieved passages go into the prompt: no duplicates, no source crowding out the rest, and
never more tokens than the request's budget (counted with the chat model's own tokenizer)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from penstock.context.hardening import defuse, quoted
from penstock.types import Passage

NEAR_DUPLICATE = 0.8  # Jaccard similarity of word 3-shingles above which two passages say the same


@dataclass(frozen=True, slots=True)
class PassageBudget:
    max_tokens: int
    max_chunks: int
    max_per_source: int = 3


@dataclass(frozen=True, slots=True)
class Selected:
    passages: tuple[Passage, ...]  # in prompt order: passage i is cited as [i + 1]
    blocks: tuple[str, ...]  # each as the prompt quotes it
    tokens: int
    flagged_lines: int  # instruction-like lines defused across the chosen passages


def select(passages: Sequence[Passage], budget: PassageBudget, count: Callable[[str], int]) -> Selected:
    """Best first, skipping exact and near duplicates, over-represented sources, and whatever no
    longer fits; a smaller passage further down may still fill the room a large one left."""
    chosen: list[Passage] = []
    blocks: list[str] = []
    seen: set[str] = set()
    shingle_sets: list[frozenset[str]] = []
    per_source: Counter[str] = Counter()
    used = flagged = 0
    for passage in passages:
        if len(chosen) == budget.max_chunks:
            break
        words = _words(passage.text)
        digest = hashlib.sha256(" ".join(words).encode()).hexdigest()
        shingles = _shingles(words)
        if digest in seen or any(_jaccard(shingles, s) >= NEAR_DUPLICATE for s in shingle_sets):
            continue
        if per_source[passage.source] >= budget.max_per_source:
            continue
        defused = defuse(passage.text)
        heading = defuse(passage.heading.replace("\n", " ")).text
        block = quoted(len(chosen) + 1, passage.source.replace("\n", " "), passage.version, heading, defused.text)
        tokens = count(block)
        if used + tokens > budget.max_tokens:
            continue
        chosen.append(passage)
        blocks.append(block)
        seen.add(digest)
        shingle_sets.append(shingles)
        per_source[passage.source] += 1
        used += tokens
        flagged += defused.flagged_lines
    return Selected(tuple(chosen), tuple(blocks), used, flagged)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _shingles(words: list[str]) -> frozenset[str]:
    if len(words) < 3:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i : i + 3]) for i in range(len(words) - 2))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0
