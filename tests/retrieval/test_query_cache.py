"""Query embeddings keyed by their window's tokens and bounded in bytes (audit finding 6)."""

from __future__ import annotations

import pytest

from penstock.config import Settings
from penstock.engine.locator import locate_embedding_model
from penstock.retrieval.embedder import Embedder
from penstock.retrieval.query_cache import QueryEmbeddings


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(locate_embedding_model(Settings().embedding_model_path), "minilm", dtype="float32")


async def test_huge_questions_cost_the_cache_their_window_not_their_size(embedder: Embedder) -> None:
    queries = QueryEmbeddings(embedder, max_bytes=2**20)
    for i in range(20):  # ~1 MB each; the audit's 150 grew the process by 117 MB
        text = "where are the backups kept? " * 40 + f"tail {i} " + "x" * 1_000_000
        vector = await queries.embed(queries.query(text))
        assert len(vector) == embedder.dimensions
    assert queries.misses == 1 and queries.hits == 19  # the same 256-token window, one entry
    assert queries.bytes < 4_000


async def test_the_cache_stays_within_its_bytes_evicting_the_oldest(embedder: Embedder) -> None:
    queries = QueryEmbeddings(embedder, max_bytes=8_000)  # room for four ~1.7 KB entries
    asked = [queries.query(f"question number {i}") for i in range(8)]
    for query in asked:
        await queries.embed(query)
    assert len(queries) == 4 and queries.bytes <= 8_000
    await queries.embed(asked[-1])
    assert queries.hits == 1
    await queries.embed(asked[0])  # evicted: embedded again
    assert queries.misses == 9
