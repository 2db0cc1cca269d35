"""Late-interaction reranking: MaxSim over MiniLM's token embeddings (ColBERT's scoring rule).

Each query token is matched to its most similar token in the passage and the similarities summed,
so a passage scores by how well it covers every part of the query, not by one pooled vector. It
reuses the embedding model, so nothing else is loaded. It runs on a thread of its own: a rerank that
overruns its timeout is abandoned by the request (the fused order is used) without delaying the
next query's embedding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from penstock.retrieval.embedder import Embedder
from penstock.retrieval.token_cache import TokenVectorCache
from penstock.store.documents import Hit


class MaxSimReranker:
    def __init__(self, embedder: Embedder, cache: TokenVectorCache | None = None) -> None:
        """`cache`: passages' token vectors, filled by ingestion and by earlier reranks."""
        self._embedder = embedder
        self.cache = cache
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="penstock-rerank")

    async def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]:
        """The hits, best first, each scored by MaxSim."""
        if not hits:
            return []
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(self._executor, self._scores, query, [passage_text(h) for h in hits])
        ranked = sorted(zip(scores, hits, strict=True), key=lambda pair: -pair[0])
        return [Hit(h.chunk_id, h.source, h.version, h.heading, h.body, h.tokens, score) for score, h in ranked]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _scores(self, query: str, passages: list[str]) -> list[float]:
        known = [self.cache.get(p) if self.cache is not None else None for p in passages]
        missing = [p for p, vectors in zip(passages, known, strict=True) if vectors is None]
        query_tokens, *computed = self._embedder.token_vectors([query, *missing])
        fresh = iter(computed)
        passage_tokens = [vectors if vectors is not None else next(fresh) for vectors in known]
        if self.cache is not None:
            for text, vectors in zip(missing, computed, strict=True):
                self.cache.put(text, vectors)
        if query_tokens.numel() == 0:
            return [0.0] * len(passages)
        # (query tokens x passage tokens) similarities; best passage token per query token, summed.
        return [
            float((query_tokens @ p.float().T).max(dim=1).values.sum()) if p.numel() else 0.0 for p in passage_tokens
        ]


def passage_text(hit: Hit) -> str:
    return f"{hit.heading}\n{hit.body}" if hit.heading else hit.body
