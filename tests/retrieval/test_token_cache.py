"""Token vectors kept for MaxSim: bounded, least recently used out, filled by ingestion, same scores."""

from __future__ import annotations

import pytest
import torch

from penstock.config import Settings
from penstock.engine.locator import locate_embedding_model
from penstock.retrieval.embedder import Embedder
from penstock.retrieval.reranker import MaxSimReranker
from penstock.retrieval.token_cache import TokenVectorCache
from penstock.store.documents import Hit

PASSAGES = [
    "Backups run every night at two and are kept for thirty days.",
    "The cafeteria serves lunch from noon until two.",
    "Restoring a backup takes about an hour for a full database.",
]


def test_the_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used() -> None:
    entry = torch.ones(10, 4)  # 80 bytes in fp16
    cache = TokenVectorCache(max_bytes=200)
    cache.put("a", entry)
    cache.put("b", entry)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", entry)
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 160 and len(cache) == 2
    stored = cache.get("a")
    assert stored is not None and stored.dtype == torch.float16
    cache.put("huge", torch.ones(1000, 4))  # larger than the whole cache: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(locate_embedding_model(Settings().embedding_model_path), "minilm", dtype="float32")


def hits() -> list[Hit]:
    return [Hit(i, f"doc{i}", 1, "", text, 0, 0.0) for i, text in enumerate(PASSAGES)]


async def test_ingestion_leaves_token_vectors_and_reranking_then_skips_the_model(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = MaxSimReranker(embedder)
    expected = await plain.rerank("how long does a restore take", hits())
    cache = TokenVectorCache(2**24)
    await embedder.embed(PASSAGES, cache)  # what the ingestor does
    assert len(cache) == len(PASSAGES)
    seen: list[int] = []
    original = embedder.token_vectors
    monkeypatch.setattr(embedder, "token_vectors", lambda texts: seen.append(len(texts)) or original(texts))
    cached = MaxSimReranker(embedder, cache)
    ranked = await cached.rerank("how long does a restore take", hits())
    assert seen == [1]  # the query alone went through the model
    assert [h.chunk_id for h in ranked] == [h.chunk_id for h in expected]
    assert [h.score for h in ranked] == pytest.approx([h.score for h in expected], abs=1e-2)
    plain.close()
    cached.close()


async def test_a_rerank_leaves_what_it_computed_for_the_next(embedder: Embedder) -> None:
    cache = TokenVectorCache(2**24)
    reranker = MaxSimReranker(embedder, cache)
    await reranker.rerank("lunch", hits())
    assert len(cache) == len(PASSAGES)
    reranker.close()
