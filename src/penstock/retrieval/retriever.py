"""The retrieval stage: query → embedding → dense and sparse search at once → fusion → rerank.

Every sub-stage is timed. Retrieval never takes the answer down: a reranker that fails or overruns
its timeout leaves the fused order (recorded as a degradation); a search that fails, or finds
nothing similar enough, gives status "failed" or "empty" and no passages, for the context builder
to answer from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from penstock.observability.timing import StageTimer
from penstock.retrieval.embedder import Query
from penstock.retrieval.fusion import reciprocal_rank_fusion
from penstock.store.documents import Hit, Scope
from penstock.types import Passage, Principal, Retrieval

log = structlog.get_logger("penstock.retrieval")


@dataclass(frozen=True, slots=True)
class RetrieverConfig:
    candidates: int = 30  # rows each search returns
    min_similarity: float = 0.2  # below this cosine similarity a dense hit is noise, not an answer
    rerank_timeout_s: float = 2.0
    # The reranker runs MiniLM over every candidate it sees (about 0.05 s each on one core here),
    # so it reorders the head of the fused list and leaves the tail in fused order.
    rerank_candidates: int = 10


class Searches(Protocol):
    async def dense(self, scope: Scope, vector: Sequence[float], limit: int) -> list[Hit]: ...

    async def sparse(self, scope: Scope, query: str, limit: int) -> list[Hit]: ...


class QueryEmbedder(Protocol):
    def query(self, text: str) -> Query: ...

    async def embed(self, query: Query) -> list[float]: ...


class Reranker(Protocol):
    async def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]: ...


class Retriever:
    def __init__(
        self,
        store: Searches,
        embeddings: QueryEmbedder,
        reranker: Reranker | None,
        config: RetrieverConfig | None = None,
    ) -> None:
        self._store = store
        self._embeddings = embeddings
        self._reranker = reranker
        self.config = config or RetrieverConfig()

    async def retrieve(
        self, query: str, principal: Principal, collections: Sequence[str], top_k: int, *, rerank: bool = True
    ) -> Retrieval:
        timer = StageTimer()
        scope = Scope(principal, tuple(collections))
        try:
            query = self._embeddings.query(query).text  # every stage reads the question as the embedder does
            dense, sparse = await self.search(query, scope, timer)
        except Exception as exc:  # a database or model failure: answered from the fallback, not a 500
            log.warning("retrieval_failed", error_type=type(exc).__name__, error=str(exc))
            return Retrieval((), "failed", ("search_failed",), dict(timer.seconds), tuple(timer.intervals))
        relevant = [h for h in dense if h.score >= self.config.min_similarity]
        with timer.stage("fuse"):
            fused = reciprocal_rank_fusion([relevant, sparse])
        if not fused:
            return Retrieval((), "empty", (), dict(timer.seconds), tuple(timer.intervals))
        ranked, degraded = await self._reranked(query, fused, rerank, timer)
        passages = tuple(_passage(h) for h in ranked[:top_k])
        return Retrieval(passages, "ok", degraded, dict(timer.seconds), tuple(timer.intervals))

    async def search(self, query: str, scope: Scope, timer: StageTimer) -> tuple[list[Hit], list[Hit]]:
        """Dense and sparse candidates, searched at once, each timed; `query` within the embedder's window."""
        with timer.stage("embed"):
            vector = await self._embeddings.embed(self._embeddings.query(query))
        limit = self.config.candidates

        async def timed(name: str, search: Awaitable[list[Hit]]) -> list[Hit]:
            with timer.stage(name):
                return await search

        dense, sparse = await asyncio.gather(
            timed("dense", self._store.dense(scope, vector, limit)),
            timed("sparse", self._store.sparse(scope, query, limit)),
        )
        return dense, sparse

    async def _reranked(
        self, query: str, fused: list[Hit], rerank: bool, timer: StageTimer
    ) -> tuple[list[Hit], tuple[str, ...]]:
        if not rerank or self._reranker is None:
            return fused, ()
        head, tail = fused[: self.config.rerank_candidates], fused[self.config.rerank_candidates :]
        try:
            with timer.stage("rerank"):
                async with asyncio.timeout(self.config.rerank_timeout_s):
                    return await self._reranker.rerank(query, head) + tail, ()
        except TimeoutError:
            return fused, ("rerank_timeout",)
        except Exception as exc:
            log.warning("rerank_failed", error_type=type(exc).__name__, error=str(exc))
            return fused, ("rerank_failed",)


def _passage(hit: Hit) -> Passage:
    return Passage(hit.chunk_id, hit.source, hit.version, hit.heading, hit.body, hit.score)
