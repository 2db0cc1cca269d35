"""The ledger's spool file: rows kept across a database outage and a crash, replayed exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from penstock.store.database import Database
from penstock.store.ledger import LedgerRow, LedgerStore
from penstock.store.ledger_spool import LedgerSpool


def rows(*ids: str) -> list[LedgerRow]:
    now = datetime.now(UTC)
    return [
        LedgerRow(i, "acme", "key_1", "chat.completions", "ok", now, "d", "m", 3, 4, 0.5, 12.5, {"prefill": 1.0})
        for i in ids
    ]


class Collect:
    def __init__(self, fail: bool = False) -> None:
        self.rows: list[LedgerRow] = []
        self.fail = fail

    async def __call__(self, batch: Sequence[LedgerRow]) -> None:
        if self.fail:
            raise ConnectionError("database down")
        self.rows += batch


async def test_rows_come_back_as_they_went_in_and_the_file_goes(tmp_path: Path) -> None:
    spool, written = LedgerSpool(tmp_path / "ledger.jsonl"), rows("a", "b", "c")
    spool.append(written[:2])
    spool.append(written[2:])
    insert = Collect()
    assert await spool.replay(insert, batch=2) == 3
    assert insert.rows == written
    assert not spool.pending() and list(tmp_path.iterdir()) == []


async def test_a_failed_replay_keeps_the_rows_and_new_ones_are_not_mixed_in(tmp_path: Path) -> None:
    spool = LedgerSpool(tmp_path / "ledger.jsonl")
    spool.append(rows("a"))
    with pytest.raises(ConnectionError):
        await spool.replay(Collect(fail=True))
    spool.append(rows("b"))  # spooled while the first file waits aside
    insert = Collect()
    await spool.replay(insert)
    assert [r.request_id for r in insert.rows] == ["a"]
    await spool.replay(insert)
    assert [r.request_id for r in insert.rows] == ["a", "b"] and not spool.pending()


async def test_a_line_cut_short_by_a_crash_is_skipped_not_fatal(tmp_path: Path) -> None:
    spool = LedgerSpool(tmp_path / "ledger.jsonl")
    spool.append(rows("a", "b"))
    with spool.path.open("a") as file:
        file.write('{"request_id": "c", "tena')  # the process died mid-append
    insert = Collect()
    assert await spool.replay(insert) == 2
    assert [r.request_id for r in insert.rows] == ["a", "b"]


async def test_replaying_rows_already_written_counts_none_twice(tmp_path: Path, database: Database) -> None:
    store, spool = LedgerStore(database), LedgerSpool(tmp_path / "ledger.jsonl")
    await store.insert(rows("a"))  # written, then the process crashed before the spool was deleted
    spool.append(rows("a", "b"))
    await spool.replay(store.insert)
    async with database.connection() as conn:
        found = await (await conn.execute("SELECT request_id, cost FROM usage_ledger ORDER BY request_id")).fetchall()
    assert [r[0] for r in found] == ["a", "b"]


async def test_a_row_json_cannot_carry_is_left_out_and_the_others_kept(tmp_path: Path) -> None:
    spool = LedgerSpool(tmp_path / "ledger.jsonl")
    bad = LedgerRow("bad", "acme", None, "chat.completions", "ok", datetime.now(UTC), model="\ud800")
    spool.append([*rows("a"), bad, *rows("b")])
    insert = Collect()
    assert await spool.replay(insert) == 2 and [r.request_id for r in insert.rows] == ["a", "b"]
