"""The ledger's batch insert and the daily spend totals the database keeps beside it."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

from penstock.store.database import Database, connect
from penstock.store.ledger import LedgerRow, LedgerStore
from penstock.store.migrations import apply_migrations, load_migrations

NOW = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
TODAY, MONTH = NOW.date(), NOW.date().replace(day=1)


def row(request_id: str, tenant: str, tokens: int, cost: float, at: datetime = NOW) -> LedgerRow:
    return LedgerRow(request_id, tenant, None, "chat.completions", "ok", at, prompt_tokens=tokens, cost=cost)


async def test_a_batch_lands_whole_with_every_column(database: Database) -> None:
    full = LedgerRow(
        "full", "acme", "key_1", "chat.completions", "error", NOW, "stable", "smollm2", 7, 3, 0.125, 41.5,
        {"gateway": 1.25}, "rule:premium,fallback:big:status_503",
    )  # fmt: skip
    await LedgerStore(database).insert([full, row("bare", "acme", 0, 0.0)])
    async with database.connection() as conn:
        cursor = await conn.execute(
            "SELECT request_id, key_id, deployment, model, prompt_tokens, completion_tokens, cost::float8,"
            " latency_ms, stage_ms, status, created_at, route_reason FROM usage_ledger ORDER BY request_id"
        )
        reason = "rule:premium,fallback:big:status_503"
        assert await cursor.fetchall() == [
            ("bare", None, None, None, 0, 0, 0.0, None, {}, "ok", NOW, None),
            ("full", "key_1", "stable", "smollm2", 7, 3, 0.125, 41.5, {"gateway": 1.25}, "error", NOW, reason),
        ]


async def test_spend_counts_each_kept_row_once_by_utc_day(database: Database) -> None:
    store = LedgerStore(database)
    yesterday, last_month = NOW - timedelta(days=1), NOW - timedelta(days=30)
    await store.insert([row("a", "acme", 10, 0.5), row("b", "acme", 5, 0.25, yesterday), row("c", "beta", 1, 0.0)])
    await store.insert([row("a", "acme", 10, 0.5), row("d", "acme", 100, 9.0, last_month)])  # "a" replayed
    spend = await store.tenant_spend(TODAY, MONTH)
    assert (spend["acme"].day.tokens, spend["acme"].day.cost) == (10, 0.5)
    assert (spend["acme"].month.tokens, spend["acme"].month.cost) == (15, 0.75)
    assert (spend["beta"].day.tokens, spend["beta"].month.tokens) == (1, 1)


async def test_the_day_is_utcs_whatever_the_writers_time_zone(database: Database, database_url: str) -> None:
    async with await connect(database_url) as conn:  # 23:30 UTC on the 25th is the 26th in Tokyo
        await conn.execute("SET TIME ZONE 'Asia/Tokyo'")
        await conn.execute(
            "INSERT INTO usage_ledger (request_id, tenant_id, route, prompt_tokens, status, created_at)"
            " VALUES ('t', 'acme', 'chat.completions', 2, 'ok', %s)",
            (NOW,),
        )
        await conn.commit()
    assert (await LedgerStore(database).tenant_spend(TODAY, MONTH))["acme"].day.tokens == 2


async def test_replicas_writing_the_same_tenants_at_once_add_up_exactly(database_url: str) -> None:
    async with Database(database_url) as one, Database(database_url) as two:
        batches = [
            [row(f"{side}{i}-{tenant}", tenant, 1, 0.5) for tenant in (order if i % 2 else order[::-1])]
            for side in ("x", "y")
            for i in range(20)
            for order in [("acme", "beta", "gamma")]
        ]
        stores = [LedgerStore(one), LedgerStore(two)]
        await asyncio.gather(*(stores[i % 2].insert(batch) for i, batch in enumerate(batches)))
        spend = await stores[0].tenant_spend(TODAY, MONTH)
    assert {tenant: (s.day.tokens, s.month.cost) for tenant, s in spend.items()} == {
        tenant: (40, 20.0) for tenant in ("acme", "beta", "gamma")
    }


async def test_the_migration_totals_the_rows_already_in_the_ledger(blank_database_url: str) -> None:
    before = [m for m in load_migrations() if m.version < 5]
    await apply_migrations(blank_database_url, before)
    async with await connect(blank_database_url, autocommit=True) as conn:  # the columns of that time
        for request_id, tokens, cost, at in (("a", 3, 0.5, NOW), ("b", 4, 0.25, NOW - timedelta(days=1))):
            await conn.execute(
                "INSERT INTO usage_ledger (request_id, tenant_id, route, status, prompt_tokens, cost, created_at)"
                " VALUES (%s, 'acme', 'chat.completions', 'ok', %s, %s, %s)",
                (request_id, tokens, cost, at),
            )
    await apply_migrations(blank_database_url)
    async with await connect(blank_database_url) as conn:
        cursor = await conn.execute("SELECT tenant_id, day, tokens, cost::float8 FROM tenant_daily_spend ORDER BY day")
        assert await cursor.fetchall() == [("acme", date(2026, 11, 24), 4, 0.25), ("acme", TODAY, 3, 0.5)]


async def test_a_nul_in_a_row_costs_neither_it_nor_its_batch(database: Database) -> None:
    named = LedgerRow("n", "acme", None, "chat.completions", "model_not_found", NOW, model="no\x00such")
    await LedgerStore(database).insert([named, row("ok", "acme", 1, 0.0)])
    async with database.connection() as conn:
        cursor = await conn.execute("SELECT request_id, model FROM usage_ledger ORDER BY request_id")
        assert await cursor.fetchall() == [("n", "nosuch"), ("ok", None)]
