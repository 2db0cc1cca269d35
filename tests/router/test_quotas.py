"""Budgets per UTC day and calendar month, from the ledger and from this replica's own spend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from penstock.errors import QuotaExceeded
from penstock.identity import TenantLimits
from penstock.observability.ledger_writer import LedgerWriter
from penstock.router.quotas import QuotaBook
from penstock.store.database import Database
from penstock.store.ledger import LedgerRow, LedgerStore
from penstock.store.ledger_spool import LedgerSpool
from penstock.types import Caller

NOW = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)


def caller(**limits: float) -> Caller:
    return Caller("key_1", "acme", tenant_limits=TenantLimits(**limits))


def row(request_id: str, tokens: int, cost: float, at: datetime) -> LedgerRow:
    return LedgerRow(request_id, "acme", "key_1", "chat.completions", "ok", at, prompt_tokens=tokens, cost=cost)


async def test_a_daily_budget_resets_at_midnight_utc_and_a_monthly_one_does_not(database: Database) -> None:
    clock = [NOW]
    book = QuotaBook(LedgerStore(database), clock=lambda: clock[0])
    book.add("acme", 120, 0.5)
    with pytest.raises(QuotaExceeded) as spent:
        book.check(caller(daily_tokens=100))
    assert spent.value.retry_after_s == pytest.approx(3600)  # an hour to midnight
    clock[0] = NOW + timedelta(hours=2)  # the 26th
    book.check(caller(daily_tokens=100))
    with pytest.raises(QuotaExceeded, match="monthly token"):
        book.check(caller(monthly_tokens=100))


async def test_the_book_reads_other_replicas_spend_from_the_ledger(database: Database) -> None:
    store = LedgerStore(database)
    await store.insert(
        [row("a", 10, 0.20, NOW), row("b", 10, 0.25, NOW), row("old", 999, 9.0, NOW - timedelta(days=40))]
    )
    book = QuotaBook(store, clock=lambda: NOW)
    book.check(caller(daily_cost=1.0))
    await book.refresh()
    book.check(caller(daily_tokens=21, monthly_cost=0.5))
    with pytest.raises(QuotaExceeded, match="daily cost"):
        book.check(caller(daily_cost=0.45))


async def test_the_writer_keeps_rows_while_the_database_is_closed(database: Database) -> None:
    writer = LedgerWriter(LedgerStore(database))
    await database.close()
    writer.record(row("kept", 5, 0.0, NOW))
    assert not await writer.flush() and writer.pending == 1
    await database.open()
    assert await writer.flush() and writer.pending == 0
    spend = await LedgerStore(database).tenant_spend(NOW.date(), NOW.date().replace(day=1))
    assert spend["acme"].day.tokens == 5


def test_the_writer_drops_the_oldest_rows_beyond_its_bound() -> None:
    writer = LedgerWriter(LedgerStore(None), max_pending=2)  # type: ignore[arg-type]  # never flushed
    for i in range(3):
        writer.record(row(str(i), 1, 0.0, NOW))
    assert (writer.pending, writer.dropped) == (2, 1)


async def test_rows_the_spool_cannot_take_wait_in_memory(tmp_path: Path, database: Database) -> None:
    (tmp_path / "not-a-directory").write_text("")  # the spool's folder cannot be made: an OSError
    writer = LedgerWriter(LedgerStore(database), LedgerSpool(tmp_path / "not-a-directory" / "ledger.jsonl"))
    await database.close()
    writer.record(row("kept", 5, 0.0, NOW))
    assert not await writer.flush() and writer.pending == 1
