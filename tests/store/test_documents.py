"""Documents and chunks in Postgres: versions, deletion, and searches that never leak across tenants or ACLs."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from penstock.store.database import Database
from penstock.store.documents import DocumentStore, NewChunk, Scope
from penstock.types import Acl, Principal

DIMS = 384
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]


def unit(rng: np.random.Generator) -> list[float]:
    v = rng.standard_normal(DIMS)
    return list(v / np.linalg.norm(v))


def chunks_of(texts: list[str], rng: np.random.Generator) -> list[NewChunk]:
    return [NewChunk(i, "", t, len(t.split()), f"h{i}", unit(rng)) for i, t in enumerate(texts)]


def everyone(tenant: str, collection: str = "docs") -> Scope:
    return Scope(Principal(tenant), (collection,))


async def test_a_new_version_replaces_the_old_one_in_search(database: Database) -> None:
    store, rng = DocumentStore(database), np.random.default_rng(0)
    first = await store.replace("t", "docs", "guide.md", "hash1", Acl(), chunks_of(["old kilo text"], rng))
    second = await store.replace(
        "t", "docs", "guide.md", "hash2", Acl(), chunks_of(["new lima text", "more lima"], rng)
    )
    assert (first, second) == (1, 2)
    assert await store.live_version("t", "docs", "guide.md") == (2, "hash2")
    assert await store.sparse(everyone("t"), "kilo", 10) == []
    assert {h.version for h in await store.sparse(everyone("t"), "lima", 10)} == {2}
    assert {h.version for h in await store.dense(everyone("t"), unit(rng), 10)} == {2}
    (listed,) = await store.documents("t", "docs")
    assert (listed.version, listed.chunks) == (2, 2)


async def test_a_deleted_document_is_gone_at_once_and_returns_as_a_later_version(database: Database) -> None:
    store, rng = DocumentStore(database), np.random.default_rng(1)
    await store.replace("t", "docs", "a.md", "h", Acl(), chunks_of(["mike words"], rng))
    assert await store.delete("t", "docs", "a.md")
    assert await store.sparse(everyone("t"), "mike", 10) == []
    assert await store.dense(everyone("t"), unit(rng), 10) == []
    assert await store.documents("t", "docs") == []
    assert not await store.delete("t", "docs", "a.md")
    assert await store.replace("t", "docs", "a.md", "h", Acl(), chunks_of(["mike again"], rng)) == 2


async def test_concurrent_writers_of_one_source_leave_one_live_version(database: Database) -> None:
    store, rng = DocumentStore(database), np.random.default_rng(2)
    writes = [store.replace("t", "docs", "same.md", f"h{i}", Acl(), chunks_of([f"oscar {i}"], rng)) for i in range(5)]
    assert sorted(await asyncio.gather(*writes)) == [1, 2, 3, 4, 5]
    assert len(await store.sparse(everyone("t"), "oscar", 10)) == 1


async def test_a_selective_filter_loses_no_recall(database: Database) -> None:
    """Few readable rows among many: dense search still returns the exact nearest among them."""
    store, rng = DocumentStore(database), np.random.default_rng(3)
    for batch in range(3):
        await store.replace("big", "docs", f"bulk{batch}", "h", Acl(groups=("many",)), chunks_of(["papa"] * 400, rng))
    await store.replace("big", "docs", "secret", "h", Acl(groups=("few",)), chunks_of(["quiet"] * 12, rng))
    async with database.connection() as conn:
        rows = await (await conn.execute("SELECT id, embedding FROM chunks WHERE source = 'secret'")).fetchall()
    query = unit(rng)
    exact = sorted(rows, key=lambda r: -float(np.dot(r[1].to_numpy(), query)))[:5]
    hits = await store.dense(Scope(Principal("big", groups=("few",)), ("docs",)), query, 5)
    assert [h.chunk_id for h in hits] == [r[0] for r in exact]
    assert [h.source for h in hits] == ["secret"] * 5


async def test_ten_thousand_random_queries_never_leak_across_tenants_or_acls(database: Database) -> None:
    store, np_rng, rng = DocumentStore(database), np.random.default_rng(4), random.Random(4)
    tenants, collections, groups, users = ["t1", "t2", "t3"], ["c1", "c2"], ["g1", "g2", "g3", "g4"], ["u1", "u2", "u3"]
    for tenant in tenants:
        for collection in collections:
            for d in range(12):
                acl = Acl(tuple(rng.sample(groups, rng.randint(0, 2))), tuple(rng.sample(users, rng.randint(0, 1))))
                texts = [" ".join(rng.sample(WORDS, 4)) for _ in range(2)]
                await store.replace(tenant, collection, f"d{d}", "h", acl, chunks_of(texts, np_rng))
    async with database.connection() as conn:
        rows = await (
            await conn.execute("SELECT id, tenant_id, collection, acl_groups, acl_users FROM chunks")
        ).fetchall()
    owner = {r[0]: (r[1], r[2], set(r[3]), set(r[4])) for r in rows}

    def readable(chunk_id: int, scope: Scope) -> bool:
        tenant, collection, acl_groups, acl_users = owner[chunk_id]
        p = scope.principal
        open_to_all = not acl_groups and not acl_users
        allowed = open_to_all or (p.user in acl_users) or bool(acl_groups & set(p.groups))
        return tenant == p.tenant and collection in scope.collections and allowed

    async def one_query() -> int:
        principal = Principal(
            rng.choice(tenants), rng.choice([None, *users]), tuple(rng.sample(groups, rng.randint(0, 3)))
        )
        scope = Scope(principal, tuple(rng.sample(collections, rng.randint(1, 2))))
        dense = await store.dense(scope, unit(np_rng), 8)
        sparse = await store.sparse(scope, " ".join(rng.sample(WORDS, 3)), 8)
        expected = sum(readable(i, scope) for i in owner)
        assert len(dense) == min(8, expected)  # nothing readable is lost either
        return sum(not readable(h.chunk_id, scope) for h in [*dense, *sparse])

    leaks = 0
    for _ in range(10_000 // 8):
        leaks += sum(await asyncio.gather(*(one_query() for _ in range(8))))
    assert leaks == 0


async def test_common_words_are_asked_for_together_and_rare_ones_alone(database: Database) -> None:
    store, rng = DocumentStore(database), np.random.default_rng(6)
    texts = [f"alpha bravo {WORDS[i % 16]}" for i in range(40)] + ["alpha charlie"] * 10 + ["bravo delta"] * 10
    texts.append("alpha zebra")  # in one chunk of 61: under 2%, rare
    await store.replace("t", "docs", "a.md", "h", Acl(), chunks_of(texts, rng))
    await store.analyze()  # alpha and bravo are now known to be in most chunks
    both = await store.sparse(everyone("t"), "alpha bravo", 100)
    assert both and all("alpha" in h.body and "bravo" in h.body for h in both)  # AND, not OR
    rare = await store.sparse(everyone("t"), "alpha zulu xray", 100)  # no rare word matches: the common one
    assert rare and all("alpha" in h.body for h in rare)
    zebra = await store.sparse(everyone("t"), "alpha zebra", 100)  # a rare word: it alone decides
    assert [h.body for h in zebra] == ["alpha zebra"]


@pytest.mark.parametrize("query", ["", "!!! ---", "drop table chunks; --", "a & b | !c <-> d"])
async def test_any_text_is_a_safe_full_text_query(database: Database, query: str) -> None:
    store, rng = DocumentStore(database), np.random.default_rng(5)
    await store.replace("t", "docs", "a.md", "h", Acl(), chunks_of(["drop table words"], rng))
    hits = await store.sparse(everyone("t"), query, 5)
    assert all(h.source == "a.md" for h in hits)
