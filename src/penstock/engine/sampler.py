"""Pick each sequence's next token from its logits, with OpenAI's and Hugging Face's sampling knobs.

Order per row: token mask (grammar) → penalties → temperature → top-k → top-p → min-p → draw.
Log-probabilities are reported from the model's own distribution, before any of that.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
from torch import Tensor

from penstock.engine.sequence import Sequence
from penstock.types import SamplingParams


@dataclass(frozen=True, slots=True)
class Logprob:
    """A sampled token's log-probability and the top alternatives, as token ids."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def request_rng(seed: int | None, device: torch.device) -> torch.Generator:
    """One generator per request, so a seeded request draws the same tokens whatever runs beside it."""
    rng = torch.Generator(device=device)
    if seed is None:
        rng.seed()
    else:
        rng.manual_seed(seed)
    return rng


def sample_batch(logits: Tensor, seqs: Seq[Sequence]) -> list[tuple[int, Logprob | None]]:
    """logits (N, vocab_size), one row per sequence → each sequence's token (and its logprob if asked)."""
    if all(s.params.greedy_only and s.token_mask is None for s in seqs):
        return [(token, None) for token in logits.argmax(dim=-1).tolist()]  # one call for the common case
    return [sample_row(row, seq) for row, seq in zip(logits, seqs, strict=True)]


def sample_row(logits: Tensor, seq: Sequence) -> tuple[int, Logprob | None]:
    raw = logits.float()
    scores = penalize(raw, seq)
    if seq.token_mask is not None:
        allowed = seq.token_mask(seq)
        if allowed is not None:
            scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
    token = draw(scores, seq.params, seq.rng)
    return token, logprob_of(raw, token, seq.params) if seq.params.logprobs else None


def draw(scores: Tensor, params: SamplingParams, rng: torch.Generator) -> int:
    if params.temperature == 0:
        return int(scores.argmax())
    scores = scores / params.temperature
    if params.top_k > 0:
        scores = top_k(scores, params.top_k)
    if params.top_p < 1.0:
        scores = top_p(scores, params.top_p)
    if params.min_p > 0:
        scores = min_p(scores, params.min_p)
    return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=rng))


def penalize(scores: Tensor, seq: Sequence) -> Tensor:
    params = seq.params
    if params.repetition_penalty != 1:
        seen = torch.tensor(seq.token_ids, dtype=torch.long, device=scores.device)
        picked = scores[seen]
        # Hugging Face's rule: shrink a positive logit, push a negative one further down.
        scores = scores.index_put(
            (seen,), torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
        )
    if (params.presence_penalty or params.frequency_penalty) and seq.num_completion:
        generated = torch.tensor(seq.completion_ids, dtype=torch.long, device=scores.device)
        counts = torch.bincount(generated, minlength=scores.numel()).to(scores.dtype)
        scores = scores - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
    return scores


def logprob_of(raw: Tensor, token: int, params: SamplingParams) -> Logprob:
    logprobs = torch.log_softmax(raw, dim=-1)
    top: tuple[tuple[int, float], ...] = ()
    if params.top_logprobs:
        values, ids = torch.topk(logprobs, params.top_logprobs)
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return Logprob(token, float(logprobs[token]), top)


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


def min_p(scores: Tensor, p: float) -> Tensor:
    """Keep tokens at least p times as likely as the most likely one."""
    probs = torch.softmax(scores, dim=-1)
    return scores.masked_fill(probs < p * probs.max(), float("-inf"))
