"""Documents and chunks in PostgreSQL: versioned writes in one transaction, and the two searches.

Both searches put the tenant, collection and ACL filter inside their SQL, so nothing outside the
caller's reach is ever read. Dense search walks the HNSW index with pgvector's iterative scan, which
keeps scanning until enough rows pass the filter; when the filter is so selective that the scan
gives up first, it falls back to an exact search over the rows the filter admits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from psycopg import AsyncConnection

from penstock.store.database import Database
from penstock.types import Acl, Principal

# ef_search sizes the candidate list per index probe; the iterative scan stops after max_scan_tuples.
EF_SEARCH = 100
MAX_SCAN_TUPLES = 20_000
COMMON_FREQUENCY = 0.02  # a word in more chunks than this is left out of sparse queries
COMMON_REFRESH_S = 300.0

_CHUNK_COLUMNS = "id, source, version, heading, body, tokens"
# Readable: the whole tenant when a chunk has no ACL, else its listed users and groups.
_READABLE = """
    tenant_id = %(tenant)s AND collection = ANY(%(collections)s)
    AND ((acl_groups = '{}' AND acl_users = '{}') OR acl_users && %(users)s OR acl_groups && %(groups)s)
"""


# Chunks matching a tsquery, ranked. The tsquery is built from the query's own lexemes (stemmed as
# the column is, by _LEXEMES), each quoted with quotes and backslashes stripped, so no text a client
# sends can break its syntax.
_LEXEMES = "SELECT lexeme FROM unnest(to_tsvector('english', %(text)s))"
_SPARSE = f"""
    SELECT {_CHUNK_COLUMNS}, ts_rank(search_text, q) AS rank
    FROM chunks, to_tsquery('simple', %(query)s) AS q
    WHERE search_text @@ q AND {_READABLE}
    ORDER BY rank DESC, id LIMIT %(limit)s"""


@dataclass(frozen=True, slots=True)
class NewChunk:
    ordinal: int
    heading: str
    body: str
    tokens: int
    content_hash: str
    embedding: Sequence[float]


@dataclass(frozen=True, slots=True)
class StoredDocument:
    collection: str
    source: str
    version: int
    content_hash: str
    acl: Acl
    chunks: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Hit:
    """A chunk a search found, with its score under that search (higher is better)."""

    chunk_id: int
    source: str
    version: int
    heading: str
    body: str
    tokens: int
    score: float


@dataclass(frozen=True, slots=True)
class Scope:
    """What a search may read: the caller's tenant, collections, user and groups."""

    principal: Principal
    collections: tuple[str, ...]

    def params(self) -> dict[str, object]:
        p = self.principal
        return {
            "tenant": p.tenant,
            "collections": list(self.collections),
            "users": [p.user] if p.user else [],
            "groups": list(p.groups),
        }


class DocumentStore:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._common: dict[str, float] = {}
        self._common_at = -COMMON_REFRESH_S

    async def live_version(self, tenant: str, collection: str, source: str) -> tuple[int, str] | None:
        """The live version's number and content hash, or None."""
        async with self._db.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT version, content_hash FROM documents"
                    " WHERE tenant_id = %s AND collection = %s AND source = %s AND retired_at IS NULL",
                    (tenant, collection, source),
                )
            ).fetchone()
        return (row[0], row[1]) if row else None

    async def replace(
        self, tenant: str, collection: str, source: str, content_hash: str, acl: Acl, chunks: Sequence[NewChunk]
    ) -> int:
        """Make this the live version of the source, in one transaction: the old version's chunks go as
        the new ones arrive, so a search sees one version or the other, never both or neither."""
        async with self._db.connection() as conn, conn.transaction():
            # Serialise writers of one source; the partial unique index would reject the loser anyway.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{tenant}/{collection}/{source}",))
            old = await (
                await conn.execute(
                    "UPDATE documents SET retired_at = now() WHERE tenant_id = %s AND collection = %s"
                    " AND source = %s AND retired_at IS NULL RETURNING id, version",
                    (tenant, collection, source),
                )
            ).fetchone()
            version = old[1] + 1 if old else await _next_version(conn, tenant, collection, source)
            if old:
                await conn.execute("DELETE FROM chunks WHERE document_id = %s", (old[0],))
            row = await (
                await conn.execute(
                    "INSERT INTO documents (tenant_id, collection, source, version, content_hash, acl_groups,"
                    " acl_users, chunk_count) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (tenant, collection, source, version, content_hash, list(acl.groups), list(acl.users), len(chunks)),
                )
            ).fetchone()
            assert row is not None
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO chunks (document_id, tenant_id, collection, source, version, ordinal, heading, body,"
                    " tokens, content_hash, acl_groups, acl_users, embedding)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            row[0],
                            tenant,
                            collection,
                            source,
                            version,
                            c.ordinal,
                            c.heading,
                            c.body,
                            c.tokens,
                            c.content_hash,
                            list(acl.groups),
                            list(acl.users),
                            np.asarray(c.embedding, dtype=np.float32),
                        )
                        for c in chunks
                    ],
                )
        return version

    async def delete(self, tenant: str, collection: str, source: str) -> bool:
        """Retire the live version and drop its chunks at once; False if there was none."""
        async with self._db.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    "UPDATE documents SET retired_at = now() WHERE tenant_id = %s AND collection = %s"
                    " AND source = %s AND retired_at IS NULL RETURNING id",
                    (tenant, collection, source),
                )
            ).fetchone()
            if row is None:
                return False
            await conn.execute("DELETE FROM chunks WHERE document_id = %s", (row[0],))
        return True

    async def documents(self, tenant: str, collection: str, limit: int = 1000) -> list[StoredDocument]:
        async with self._db.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT collection, source, version, content_hash, acl_groups, acl_users, chunk_count, created_at"
                    " FROM documents WHERE tenant_id = %s AND collection = %s AND retired_at IS NULL"
                    " ORDER BY source LIMIT %s",
                    (tenant, collection, limit),
                )
            ).fetchall()
        return [StoredDocument(r[0], r[1], r[2], r[3], Acl(tuple(r[4]), tuple(r[5])), r[6], r[7]) for r in rows]

    async def dense(self, scope: Scope, vector: Sequence[float], limit: int) -> list[Hit]:
        """Nearest chunks by cosine similarity (score = 1 - cosine distance)."""
        params = {**scope.params(), "vector": np.asarray(vector, dtype=np.float32), "limit": limit}
        # relaxed_order: results come in roughly distance order, so they are sorted again outside.
        sql = f"""
            WITH nearest AS MATERIALIZED (
                SELECT {_CHUNK_COLUMNS}, embedding <=> %(vector)s AS distance FROM chunks
                WHERE {_READABLE} ORDER BY distance LIMIT %(limit)s
            ) SELECT * FROM nearest ORDER BY distance"""
        async with self._db.connection() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL hnsw.ef_search = {min(max(EF_SEARCH, limit), 1000)}")
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            await conn.execute(f"SET LOCAL hnsw.max_scan_tuples = {MAX_SCAN_TUPLES}")
            rows = await (await conn.execute(sql, params)).fetchall()
            if len(rows) < limit:
                # The index scan gave up before finding `limit` readable rows: the filter is selective
                # enough that reading every row it admits is cheap. Exact, so nothing is lost.
                await conn.execute("SET LOCAL enable_indexscan = off")
                rows = await (await conn.execute(sql, params)).fetchall()
        return [Hit(r[0], r[1], r[2], r[3], r[4], r[5], 1.0 - float(r[6])) for r in rows]

    async def sparse(self, scope: Scope, query: str, limit: int) -> list[Hit]:
        """Full-text matches ranked by ts_rank: any of the query's rare words (OR), or all of its words.

        Ranking every match is what sparse search spends its time on, so words in more than
        COMMON_FREQUENCY of all chunks (Postgres's own statistics of the column) are left out of
        the OR: they match a third of a corpus (20,000 chunks: p50 21 -> 2.4 ms). When no rare word
        is left, or none matched, the common words are asked for all together (AND), the most common
        dropped one at a time while nothing matches: an OR of them ("list connections") ranked
        30,000-60,000 of 100,000 chunks at 100-200 ms a query, their AND a few dozen in 2-5 ms.
        """
        async with self._db.connection() as conn:
            frequency = await self._lexeme_frequencies(conn)
            found = await (await conn.execute(_LEXEMES, {"text": query[:4096]})).fetchall()
            terms = {_quoted(lexeme): frequency.get(lexeme, 0.0) for (lexeme,) in found if _quoted(lexeme)}
            for tsquery in _tsqueries(terms):
                params = {**scope.params(), "query": tsquery, "limit": limit}
                rows = await (await conn.execute(_SPARSE, params)).fetchall()
                if rows:
                    break
            else:
                rows = []
        return [Hit(r[0], r[1], r[2], r[3], r[4], r[5], float(r[6])) for r in rows]

    async def analyze(self) -> None:
        """Refresh the planner's statistics of the chunks (autovacuum does it too, in its own time)."""
        async with self._db.connection() as conn:
            await conn.execute("ANALYZE chunks")
        self._common_at = -COMMON_REFRESH_S

    async def _lexeme_frequencies(self, conn: AsyncConnection[Any]) -> dict[str, float]:
        """The share of chunks each frequent lexeme is in, from pg_stats; re-read every few minutes."""
        now = time.monotonic()
        if now - self._common_at < COMMON_REFRESH_S:
            return self._common
        row = await (
            await conn.execute(
                "SELECT most_common_elems::text::text[], most_common_elem_freqs FROM pg_stats"
                " WHERE tablename = 'chunks' AND attname = 'search_text'"
            )
        ).fetchone()
        elems, freqs = (row[0] or [], row[1] or []) if row else ([], [])
        self._common = dict(zip(elems, freqs, strict=False))  # freqs ends with summary figures: zip drops them
        self._common_at = now
        return self._common


def _quoted(lexeme: str) -> str:
    bare = lexeme.replace("'", "").replace("\\", "")
    return f"'{bare}'" if bare else ""


def _tsqueries(terms: dict[str, float]) -> Iterator[str]:
    """The tsqueries to try in turn, from quoted terms and their frequencies: the rare terms OR-ed;
    then (none, or none matched: a typo) the common ones AND-ed, the most common dropped one at a time."""
    rare = [term for term, frequency in terms.items() if frequency <= COMMON_FREQUENCY]
    if rare:
        yield " | ".join(rare)
    common = sorted((t for t in terms if t not in rare), key=terms.__getitem__)
    for kept in range(len(common), 0, -1):
        yield " & ".join(common[:kept])


async def _next_version(conn: object, tenant: str, collection: str, source: str) -> int:
    """After a deletion the source's history goes on: a re-added document gets the next number."""
    row = await (
        await conn.execute(  # type: ignore[attr-defined]
            "SELECT coalesce(max(version), 0) + 1 FROM documents WHERE tenant_id = %s AND collection = %s"
            " AND source = %s",
            (tenant, collection, source),
        )
    ).fetchone()
    return int(row[0])
