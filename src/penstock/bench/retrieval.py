"""`penstock bench retrieval`: the retrieval stage's latency on a 100,000-chunk collection, and ingest speed.

The collection is built once from this machine's manual pages (repeated under new names if they run
short) in the configured database, under the tenant `bench`, and kept for later runs; its chunk
embeddings are cached in a file under PENSTOCK_HOME, so a rebuild skips the model. Latency is the
stage as a chat request runs it without the reranker: query embedding (cold: each query is new),
dense and sparse search at once, fusion. Ingest speed is measured on fresh documents through the
whole path: parse, chunk, embed (on every core), store. The query side embeds on one thread, as the
server does beside its engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from penstock.config import Settings
from penstock.evaluation import manpages
from penstock.observability.timing import StageTimer
from penstock.retrieval.chunker import Chunk, Chunker
from penstock.retrieval.embedder import Embedder, configured_embedder
from penstock.retrieval.ingest import IncomingDocument, Ingestor
from penstock.retrieval.parsers import parse
from penstock.retrieval.query_cache import QueryEmbeddings
from penstock.retrieval.retriever import Retriever
from penstock.store.database import Database
from penstock.store.documents import DocumentStore, NewChunk
from penstock.types import Acl, Principal

TENANT, COLLECTION = "bench", "manpages"
TARGET_P95_MS = 60.0
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class RetrievalBenchOptions:
    chunks: int = 100_000
    queries: int = 200
    ingest_documents: int = 100
    seed: int = 0


@dataclass(frozen=True, slots=True)
class RetrievalBenchResult:
    chunks: int
    queries: int
    p50_ms: float
    p95_ms: float
    target_p95_ms: float
    stage_p50_ms: dict[str, float]
    ingest_chunks_per_s: float
    ingest_documents_per_s: float
    build_seconds: float  # 0 when the collection was already there
    command: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


async def run_retrieval_bench(
    options: RetrievalBenchOptions,
    database: Database,
    embedders: tuple[Embedder, Embedder],
    cache_dir: Path,
    progress: Progress,
) -> RetrievalBenchResult:
    """`embedders`: one on every core for building and ingesting, one on a single thread for the
    query side, as `penstock serve` runs it beside the engine."""
    embedder, serving = embedders
    store = DocumentStore(database)
    # Enough pages for the chunks (about 6 a page; repeated under new names if short) and the queries.
    pages = manpages.build(limit=max(options.chunks // 4, options.queries, options.ingest_documents), seed=options.seed)
    started = time.monotonic()
    built = await _ensure_collection(store, embedder, pages.documents, options.chunks, cache_dir, progress)
    build_seconds = time.monotonic() - started if built else 0.0
    ingest_docs, ingest_chunks = await _ingest_speed(store, embedder, pages.documents, options, progress)
    latencies, stages = await _latencies(store, serving, [q.text for q in pages.queries], options, progress)
    return RetrievalBenchResult(
        chunks=await _chunk_count(database),
        queries=len(latencies),
        p50_ms=round(statistics.median(latencies), 2),
        p95_ms=round(_percentile(latencies, 95), 2),
        target_p95_ms=TARGET_P95_MS,
        stage_p50_ms={name: round(statistics.median(v), 2) for name, v in stages.items()},
        ingest_chunks_per_s=round(ingest_chunks, 1),
        ingest_documents_per_s=round(ingest_docs, 2),
        build_seconds=round(build_seconds, 1),
        command=f"penstock bench retrieval --chunks {options.chunks} --queries {options.queries} --json",
    )


async def _ensure_collection(
    store: DocumentStore,
    embedder: Embedder,
    documents: tuple[manpages.Document, ...],
    target: int,
    cache_dir: Path,
    progress: Progress,
) -> bool:
    """Fill the bench collection up to `target` chunks; False if it was full already."""
    have = sum(d.chunks for d in await store.documents(TENANT, COLLECTION, limit=1_000_000))
    if have >= target:
        return False
    chunker = Chunker(embedder.tokenizer)
    chunked: list[tuple[str, list[Chunk]]] = []
    total, rounds = 0, 0
    while total < target:  # the pages again, under new names, until there are enough chunks
        for doc in documents:
            chunks = chunker.chunks(parse(doc.text.encode(), "txt"))
            chunked.append((f"{doc.id}#{rounds}" if rounds else doc.id, chunks))
            total += len(chunks)
            if total >= target:
                break
        rounds += 1
    vectors = await _cached_embeddings(
        embedder, [c.embedded_text for _, cs in chunked for c in cs], cache_dir, progress
    )
    offset, written = 0, 0
    for source, chunks in chunked:
        rows = [
            NewChunk(c.ordinal, c.heading, c.text, c.tokens, hashlib.sha256(c.text.encode()).hexdigest(), v)
            for c, v in zip(chunks, vectors[offset : offset + len(chunks)], strict=True)
        ]
        offset += len(chunks)
        await store.replace(TENANT, COLLECTION, source, "bench", Acl(), rows)
        written += len(rows)
        progress("store", written, total)
    await store.analyze()  # statistics for the new rows now, as autovacuum would give them later
    return True


async def _cached_embeddings(embedder: Embedder, texts: list[str], cache_dir: Path, progress: Progress) -> np.ndarray:
    key = hashlib.sha256("\x00".join([embedder.name, *texts]).encode()).hexdigest()[:16]
    path = cache_dir / f"retrieval-bench-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = []
    for start in range(0, len(texts), 64):
        vectors += await embedder.embed(texts[start : start + 64])
        progress("embed", min(start + 64, len(texts)), len(texts))
    array = np.asarray(vectors, dtype=np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return array


async def _ingest_speed(
    store: DocumentStore,
    embedder: Embedder,
    documents: tuple[manpages.Document, ...],
    options: RetrievalBenchOptions,
    progress: Progress,
) -> tuple[float, float]:
    """Documents/s and chunks/s through parse, chunk, embed and store, on fresh documents."""
    ingestor, sample = Ingestor(store, embedder, Chunker(embedder.tokenizer)), documents[: options.ingest_documents]
    tenant = f"bench-ingest-{time.time_ns()}"
    started, chunks = time.monotonic(), 0
    for done, doc in enumerate(sample, start=1):
        chunks += (await ingestor.ingest(tenant, "sample", IncomingDocument(doc.id, doc.text.encode(), "txt"))).chunks
        progress("ingest", done, len(sample))
    elapsed = time.monotonic() - started
    for doc in sample:
        await store.delete(tenant, "sample", doc.id)
    return len(sample) / elapsed, chunks / elapsed


async def _latencies(
    store: DocumentStore, embedder: Embedder, queries: list[str], options: RetrievalBenchOptions, progress: Progress
) -> tuple[list[float], dict[str, list[float]]]:
    retriever = Retriever(store, QueryEmbeddings(embedder), reranker=None)
    principal, picked = Principal(TENANT), queries[: options.queries]
    await retriever.retrieve("warm up", principal, [COLLECTION], 8, rerank=False)  # loads the model
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    for done, query in enumerate(picked, start=1):
        timer = StageTimer()
        with timer.stage("total"):
            found = await retriever.retrieve(query, principal, [COLLECTION], 8, rerank=False)
        totals.append(timer.seconds["total"] * 1000)
        for name, seconds in found.stage_seconds.items():
            stages.setdefault(name, []).append(seconds * 1000)
        progress("query", done, len(picked))
    return totals, stages


async def _chunk_count(database: Database) -> int:
    async with database.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FROM chunks WHERE tenant_id = %s AND collection = %s", (TENANT, COLLECTION)
            )
        ).fetchone()
    return int(row[0]) if row else 0


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(options: RetrievalBenchOptions, settings: Settings, progress: Progress) -> RetrievalBenchResult:
    from penstock.store.runtime import DatabaseRuntime

    bulk, serving = configured_embedder(settings, os.cpu_count() or 1), configured_embedder(settings)

    async def main() -> RetrievalBenchResult:
        async with DatabaseRuntime(settings.database_url, settings.data_dir) as database:
            return await run_retrieval_bench(options, database, (bulk, serving), settings.data_dir / "cache", progress)

    try:
        return asyncio.run(main())
    finally:
        bulk.close()
        serving.close()
