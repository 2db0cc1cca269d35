"""Ingestion: a document's bytes → sections → chunks → embeddings → one versioned write.

An unchanged document (same content hash and ACL) is skipped before any model work; a changed one
becomes the next version, replacing the old chunks in one transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from penstock.errors import InvalidRequest
from penstock.retrieval.chunker import Chunker
from penstock.retrieval.embedder import Embedder
from penstock.retrieval.parser_process import ParserProcess
from penstock.retrieval.parsers import Format
from penstock.retrieval.token_cache import TokenVectorCache
from penstock.store.documents import DocumentStore, NewChunk
from penstock.types import Acl

EMBED_BATCH = 32  # chunks per embedding call: large enough to batch well, small enough to stay responsive


@dataclass(frozen=True, slots=True)
class IncomingDocument:
    source: str
    content: bytes
    format: Format
    acl: Acl = field(default_factory=Acl)


@dataclass(frozen=True, slots=True)
class Ingested:
    source: str
    version: int
    status: Literal["created", "updated", "unchanged"]
    chunks: int


class Ingestor:
    def __init__(
        self,
        store: DocumentStore,
        embedder: Embedder,
        chunker: Chunker,
        tokens: TokenVectorCache | None = None,
        parser: ParserProcess | None = None,
    ) -> None:
        """`tokens`: where the chunks' token vectors go for the reranker (the embedding pass makes them).
        `parser`: the worker documents are parsed in (default limits if not given; it starts on first use)."""
        self._store = store
        self._embedder = embedder
        self._chunker = chunker
        self._tokens = tokens
        self.parser = parser or ParserProcess()

    async def ingest(self, tenant: str, collection: str, document: IncomingDocument) -> Ingested:
        digest = content_hash(document)
        live = await self._store.live_version(tenant, collection, document.source)
        if live is not None and live[1] == digest:
            return Ingested(document.source, live[0], "unchanged", 0)
        chunks = self._chunker.chunks(await self.parser.parse(document.content, document.format))
        if not chunks:
            raise InvalidRequest(f"{document.source!r} holds no text to index", param="documents")
        vectors: list[list[float]] = []
        for start in range(0, len(chunks), EMBED_BATCH):
            batch = [c.embedded_text for c in chunks[start : start + EMBED_BATCH]]
            vectors += await self._embedder.embed(batch, self._tokens)
        rows = [
            NewChunk(c.ordinal, c.heading, c.text, c.tokens, hashlib.sha256(c.text.encode()).hexdigest(), v)
            for c, v in zip(chunks, vectors, strict=True)
        ]
        version = await self._store.replace(tenant, collection, document.source, digest, document.acl, rows)
        return Ingested(document.source, version, "created" if live is None else "updated", len(rows))


def content_hash(document: IncomingDocument) -> str:
    """Of the content and the ACL: a document whose readers changed is a new version too."""
    acl = "\x00".join(["groups", *sorted(document.acl.groups), "users", *sorted(document.acl.users)])
    return hashlib.sha256(document.content + b"\x00" + acl.encode()).hexdigest()
