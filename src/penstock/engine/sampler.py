"""Pick the next token from logits: greedy, or temperature with top-k and top-p."""

from __future__ import annotations

import torch
from torch import Tensor

from penstock.types import SamplingParams


def request_rng(seed: int | None, device: torch.device) -> torch.Generator:
    """One generator per request, so a seeded request draws the same tokens whatever runs beside it."""
    rng = torch.Generator(device=device)
    if seed is None:
        rng.seed()
    else:
        rng.manual_seed(seed)
    return rng


def sample(logits: Tensor, params: SamplingParams, rng: torch.Generator) -> int:
    """logits (vocab_size,) → one token id."""
    if params.temperature == 0:
        return int(logits.argmax())
    scores = logits.float() / params.temperature
    if params.top_k > 0:
        scores = top_k(scores, params.top_k)
    if params.top_p < 1.0:
        scores = top_p(scores, params.top_p)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=rng))


def top_k(scores: Tensor, k: int) -> Tensor:
    kth = torch.topk(scores, min(k, scores.numel())).values[-1]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p(scores: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    sorted_scores, order = torch.sort(scores, descending=True)
    probs = torch.softmax(sorted_scores, dim=-1)
    # Drop a token when the tokens before it already reach p; the most likely token always stays.
    drop_sorted = probs.cumsum(dim=-1) - probs >= p
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
