"""Ledger rows the database could not take, kept in a local append-only file until it can.

Rows are appended as JSON lines and synced to disk before the writer lets go of them. Replay
first renames the file aside (so rows spooled meanwhile start a new one), inserts what it holds
in batches, and deletes it only when all of it is in. A crash between an insert and the delete
replays the batch again on the next run: the insert skips request ids already written, so no row
is counted twice.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

import orjson
import structlog

from penstock.store.ledger import LedgerRow

log = structlog.get_logger("penstock.ledger")

Insert = Callable[[Sequence[LedgerRow]], Awaitable[None]]


class LedgerSpool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._replaying = path.with_name(path.name + ".replaying")

    def append(self, rows: Sequence[LedgerRow]) -> None:
        """On disk (fsynced) when this returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as spool:
            spool.writelines(line for line in map(_encoded, rows) if line)
            spool.flush()
            os.fsync(spool.fileno())

    def pending(self) -> bool:
        return self.path.exists() or self._replaying.exists()

    async def replay(self, insert: Insert, batch: int = 500) -> int:
        """Insert every spooled row; returns how many. Raises (keeping the file) if the database fails."""
        if not self._replaying.exists():
            if not self.path.exists():
                return 0
            self.path.rename(self._replaying)
        rows, replayed = list(_read(self._replaying)), 0
        for start in range(0, len(rows), batch):
            await insert(rows[start : start + batch])
            replayed += len(rows[start : start + batch])
        self._replaying.unlink()
        log.info("ledger_spool_replayed", rows=replayed)
        return replayed


def _encoded(row: LedgerRow) -> bytes:
    """The row as a JSON line; empty, and logged, for one that JSON cannot carry (it could never be written)."""
    try:
        return orjson.dumps(row) + b"\n"
    except TypeError as exc:  # a string with a lone surrogate, say: kept, it would fail every replay
        log.error("ledger_row_unwritable", request_id=row.request_id, error=str(exc))
        return b""


def _read(path: Path) -> Iterator[LedgerRow]:
    with path.open(encoding="utf-8") as spool:
        for number, line in enumerate(spool, start=1):
            try:
                raw = orjson.loads(line)
                yield LedgerRow(**{**raw, "created_at": datetime.fromisoformat(raw["created_at"])})
            except (ValueError, TypeError, KeyError):  # a line cut short by a crash mid-append
                log.error("ledger_spool_bad_line", path=str(path), line=number)
