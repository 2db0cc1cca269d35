"""Reciprocal rank fusion: one ranking from several, by rank alone, so scores on different scales
(cosine similarity, full-text cover density) never need calibrating against each other."""

from __future__ import annotations

from collections.abc import Sequence

from penstock.store.documents import Hit

RRF_K = 60  # the constant from Cormack et al.; it damps the weight of the very top ranks


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hit]], k: int = RRF_K) -> list[Hit]:
    """Every hit once, best first, its score the sum of 1 / (k + rank) over the rankings it is in."""
    scores: dict[int, float] = {}
    hits: dict[int, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
            hits.setdefault(hit.chunk_id, hit)
    order = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))
    return [_rescored(hits[chunk_id], scores[chunk_id]) for chunk_id in order]


def _rescored(hit: Hit, score: float) -> Hit:
    return Hit(hit.chunk_id, hit.source, hit.version, hit.heading, hit.body, hit.tokens, score)
