"""Query embeddings, remembered: the same question asked again costs no model call."""

from __future__ import annotations

from collections import OrderedDict

from penstock.retrieval.embedder import Embedder


class QueryEmbeddings:
    """An LRU over the embedder, keyed by model and text (a model swap never serves stale vectors)."""

    def __init__(self, embedder: Embedder, size: int = 4096) -> None:
        self._embedder = embedder
        self._size = size
        self._cache: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self.hits = self.misses = 0

    async def embed(self, text: str) -> list[float]:
        key = (self._embedder.name, text)
        if (vector := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return vector
        self.misses += 1
        (vector,) = await self._embedder.embed([text])
        self._cache[key] = vector
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return vector
