from pathlib import Path

from penstock.bench.retrieval import COLLECTION, TENANT, RetrievalBenchOptions, run_retrieval_bench
from penstock.config import Settings
from penstock.engine.locator import locate_embedding_model
from penstock.retrieval.embedder import Embedder
from penstock.store.database import Database
from penstock.store.documents import DocumentStore


async def test_the_bench_builds_its_collection_once_and_reports_every_figure(
    database: Database, tmp_path: Path
) -> None:
    model = locate_embedding_model(None)
    embedders = (Embedder(model, Settings().embedding_model, threads=2), Embedder(model, Settings().embedding_model))
    options = RetrievalBenchOptions(chunks=120, queries=10, ingest_documents=2)
    phases: set[str] = set()
    try:
        first = await run_retrieval_bench(options, database, embedders, tmp_path, lambda p, d, t: phases.add(p))
        second = await run_retrieval_bench(options, database, embedders, tmp_path, lambda p, d, t: None)
    finally:
        for embedder in embedders:
            embedder.close()
    assert phases == {"embed", "store", "ingest", "query"}
    assert first.chunks >= 120 and second.chunks == first.chunks  # kept, not rebuilt
    assert first.build_seconds > 0 and second.build_seconds == 0
    assert first.queries == 10 and 0 < first.p50_ms <= first.p95_ms
    assert {"embed", "dense", "sparse", "fuse"} <= set(first.stage_p50_ms)
    assert first.ingest_chunks_per_s > 0 and len(list(tmp_path.glob("retrieval-bench-*.npy"))) == 1
    assert await DocumentStore(database).documents(TENANT, COLLECTION)
