"""Passages' token vectors for MaxSim, kept so a passage is not run through the model at every rerank.

Reranking a passage needs its contextual token embeddings: a forward pass over ~200 tokens, about
a tenth of a second on one core, ten of them per request. Ingestion runs that same forward pass
to embed each chunk, so it leaves the token vectors here, and every rerank leaves the ones it had
to compute: recently ingested and often retrieved passages rerank without the model (ColBERT keeps
them all on disk; this keeps the hot ones in memory). fp16 halves the memory; the scores move by
less than 1e-3. Keyed by a digest of the passage text, bounded in bytes, least recently used out.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch


class TokenVectorCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # the embedding and the reranking threads both use it

    def get(self, text: str) -> torch.Tensor | None:
        key = _key(text)
        with self._lock:
            vectors = self._entries.get(key)
            if vectors is not None:
                self._entries.move_to_end(key)
            return vectors

    def put(self, text: str, vectors: torch.Tensor) -> None:
        stored = vectors.to(torch.float16).contiguous()
        size = stored.numel() * stored.element_size()
        if size > self.max_bytes:
            return
        key = _key(text)
        with self._lock:
            old = self._entries.pop(key, None)
            self.bytes += size - (old.numel() * old.element_size() if old is not None else 0)
            self._entries[key] = stored
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.numel() * evicted.element_size()

    def __len__(self) -> int:
        return len(self._entries)


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()
