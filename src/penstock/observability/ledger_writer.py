"""Ledger rows leave the request path at once and reach PostgreSQL in batches, off it.

`record` only appends to a queue. A background task writes what is queued every `flush_s`, in
batches of at most `batch` rows. If the database is slow or down, requests do not notice: a batch
the database refuses moves, with everything queued behind it, to the spool file on local disk,
and the spool is replayed as soon as the database takes writes again (at start-up too, for rows a
previous run left there). Nothing is lost and nothing counted twice: a row whose request id is in
the ledger already is skipped. Without a spool, rows wait in memory (up to `max_pending`; beyond
that the oldest are dropped, counted and logged).
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress

import structlog

from penstock.store.ledger import LedgerRow, LedgerStore
from penstock.store.ledger_spool import LedgerSpool

log = structlog.get_logger("penstock.ledger")


class LedgerWriter:
    def __init__(
        self,
        store: LedgerStore,
        spool: LedgerSpool | None = None,
        *,
        flush_s: float = 0.5,
        batch: int = 500,
        max_pending: int = 100_000,
    ) -> None:
        self._store = store
        self._spool = spool
        self._flush_s = flush_s
        self._batch = batch
        self._max_pending = max_pending
        self._pending: deque[LedgerRow] = deque()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, row: LedgerRow) -> None:
        self._pending.append(row)
        if len(self._pending) > self._max_pending:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("ledger_rows_dropped", dropped=self.dropped, max_pending=self._max_pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="penstock-ledger")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop and write what is left, giving up after `timeout_s`: the rest is spooled."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout_s)  # bounded, whatever the task does with the cancel
            self._task = None
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._pending and await self.flush():
                    pass
        if self._pending and self._spool is not None:
            self._spool_pending([])
        if self._pending:
            log.error("ledger_rows_lost_at_shutdown", rows=len(self._pending))

    async def flush(self) -> bool:
        """Write one batch; False when the database refused it (the rows are spooled, or stay queued)."""
        batch = [self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))]
        if not batch:
            return True
        try:
            await self._store.insert(batch)
        except BaseException as exc:  # any failure, a cancel included: keep the rows for the next try
            self._keep(batch)
            if not isinstance(exc, Exception):
                raise
            self._failed(exc)
            return False
        self._recovered()
        return True

    async def replay(self) -> bool:
        """Write the spooled rows, if any; False when the database refused them (they stay spooled)."""
        if self._spool is None or not self._spool.pending():
            return True
        try:
            await self._spool.replay(self._store.insert, self._batch)
        except Exception as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    def _keep(self, batch: list[LedgerRow]) -> None:
        if self._spool is not None:
            try:
                self._spool_pending(batch)
                return
            except OSError as exc:  # a full disk, say: the rows wait in memory instead
                log.error("ledger_spool_failed", error=str(exc), rows=len(batch) + len(self._pending))
        self._pending.extendleft(reversed(batch))

    def _spool_pending(self, batch: list[LedgerRow]) -> None:
        assert self._spool is not None
        rows = batch + list(self._pending)
        self._spool.append(rows)
        self._pending.clear()
        log.info("ledger_rows_spooled", rows=len(rows), path=str(self._spool.path))

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            log.warning("ledger_write_failed", error=str(exc) or type(exc).__name__, pending=len(self._pending))
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("ledger_write_recovered", pending=len(self._pending))
        self._failing = False

    async def _run(self) -> None:
        while True:
            if await self.replay():
                while self._pending and await self.flush():
                    pass
            await asyncio.sleep(self._flush_s)
