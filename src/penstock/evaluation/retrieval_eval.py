"""`penstock eval retrieval`: sparse, dense, hybrid and hybrid+rerank side by side on one labeled set.

The corpus goes into a collection of a scratch tenant (removed afterwards) through the same
ingestion path as any document; each query then runs through the same searches, fusion and reranker
a chat request uses. Rankings of chunks become rankings of documents (each at its best chunk).
"""

from __future__ import annotations

import secrets
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from penstock.evaluation.datasets import Dataset
from penstock.evaluation.metrics import scores, unique_documents
from penstock.observability.timing import StageTimer
from penstock.retrieval.fusion import reciprocal_rank_fusion
from penstock.retrieval.ingest import IncomingDocument, Ingestor
from penstock.retrieval.reranker import MaxSimReranker
from penstock.retrieval.retriever import Retriever
from penstock.store.documents import DocumentStore, Hit, Scope
from penstock.types import Principal

METHODS = ("sparse", "dense", "hybrid", "hybrid_rerank")

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True, slots=True)
class EvalSetup:
    store: DocumentStore
    ingestor: Ingestor
    retriever: Retriever
    reranker: MaxSimReranker


async def evaluate(dataset: Dataset, setup: EvalSetup, progress: Progress) -> dict[str, object]:
    tenant, collection = f"eval-{secrets.token_hex(4)}", "corpus"
    try:
        for done, doc in enumerate(dataset.documents, start=1):
            await setup.ingestor.ingest(tenant, collection, IncomingDocument(doc.id, doc.text.encode(), "txt"))
            progress("ingest", done, len(dataset.documents))
        results = await _run_queries(dataset, setup, Scope(Principal(tenant), (collection,)), progress)
    finally:
        for doc in dataset.documents:
            await setup.store.delete(tenant, collection, doc.id)
    return {**results, "queries": len(dataset.queries), "documents": len(dataset.documents)}


async def _run_queries(dataset: Dataset, setup: EvalSetup, scope: Scope, progress: Progress) -> dict[str, object]:
    per_method: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    latency: dict[str, list[float]] = {m: [] for m in ("search", "rerank")}
    for done, query in enumerate(dataset.queries, start=1):
        timer = StageTimer()
        dense, sparse = await setup.retriever.search(query.text, scope, timer)
        hybrid = reciprocal_rank_fusion([dense, sparse])
        head = setup.retriever.config.rerank_candidates  # as a chat request reranks: the head, tail as fused
        with timer.stage("rerank"):
            reranked = await setup.reranker.rerank(query.text, hybrid[:head]) + hybrid[head:]
        rankings = {"sparse": sparse, "dense": dense, "hybrid": hybrid, "hybrid_rerank": reranked}
        for method, hits in rankings.items():
            per_method[method].append(scores(_documents(hits), query.relevant))
        latency["search"].append(sum(v for k, v in timer.seconds.items() if k != "rerank"))
        latency["rerank"].append(timer.seconds["rerank"])
        progress("query", done, len(dataset.queries))
    summary: dict[str, object] = {m: _mean(rows) for m, rows in per_method.items()}
    summary["latency_ms"] = {k: round(statistics.median(v) * 1000, 2) for k, v in latency.items() if v}
    return summary


def _documents(hits: list[Hit]) -> list[str]:
    return unique_documents([h.source for h in hits])


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in rows[0]}
