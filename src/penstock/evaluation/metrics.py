"""Ranking metrics for one query: recall@k, MRR@k, nDCG@k with binary relevance."""

from __future__ import annotations

import math
from collections.abc import Sequence, Set


def recall_at(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def mrr_at(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    return next((1.0 / rank for rank, doc in enumerate(ranked[:k], start=1) if doc in relevant), 0.0)


def ndcg_at(ranked: Sequence[str], relevant: Set[str], k: int) -> float:
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], start=1) if doc in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal if ideal else 0.0


def scores(ranked: Sequence[str], relevant: Set[str]) -> dict[str, float]:
    return {
        "recall@1": recall_at(ranked, relevant, 1),
        "recall@5": recall_at(ranked, relevant, 5),
        "recall@10": recall_at(ranked, relevant, 10),
        "mrr@10": mrr_at(ranked, relevant, 10),
        "ndcg@10": ndcg_at(ranked, relevant, 10),
    }


def unique_documents(chunk_sources: Sequence[str]) -> list[str]:
    """A ranking of chunks as a ranking of documents: each document at its best chunk's rank."""
    return list(dict.fromkeys(chunk_sources))
