"""Query embeddings, remembered: the same question asked again costs no model call.

Keyed by a digest of the question's token ids as the model reads them (cut to its window), never by
the question's text: 150 distinct ~1 MB questions once grew the process by 117 MB, since each key held
its whole message. Bounded in bytes, least recently used out; vectors kept as 4-byte floats.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from penstock.retrieval.embedder import Embedder, Query

ENTRY_OVERHEAD = 200  # bytes an entry costs beside its vector: the key, the array and the dict's slot


class QueryEmbeddings:
    """An LRU over the embedder's query lane, keyed by model and token ids (a model swap never serves
    stale vectors)."""

    def __init__(self, embedder: Embedder, max_bytes: int = 16 * 2**20) -> None:
        self._embedder = embedder
        self.max_bytes = max_bytes
        self.bytes = 0
        self._cache: OrderedDict[bytes, array] = OrderedDict()
        self.hits = self.misses = 0

    def query(self, text: str) -> Query:
        """The question as retrieval reads it (embedding, keyword search, reranking alike)."""
        return self._embedder.query(text)

    async def embed(self, query: Query) -> list[float]:
        key = self._key(query)
        if (stored := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return stored.tolist()
        self.misses += 1
        vector = await self._embedder.embed_query(query)
        self._remember(key, array("f", vector))
        return vector

    def __len__(self) -> int:
        return len(self._cache)

    def _key(self, query: Query) -> bytes:
        digest = hashlib.blake2b(self._embedder.name.encode(), digest_size=16)
        digest.update(array("i", query.ids).tobytes())
        return digest.digest()

    def _remember(self, key: bytes, stored: array) -> None:
        size = len(stored) * stored.itemsize + ENTRY_OVERHEAD
        if size > self.max_bytes or key in self._cache:
            return
        self._cache[key] = stored
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._cache.popitem(last=False)
            self.bytes -= len(evicted) * evicted.itemsize + ENTRY_OVERHEAD
