"""Tenant budgets (tokens and cost, per UTC day and calendar month) checked without the database.

The book holds each tenant's spend as the ledger last reported it (re-read every `refresh_s`, which
brings in other replicas' requests) plus what this replica settled since that read. A request is
refused with 429 insufficient_quota once a budget is spent; the one that crosses it still finishes,
as OpenAI's do. Across replicas the view lags by up to `refresh_s` plus the ledger's flush interval.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from penstock.errors import QuotaExceeded
from penstock.store.ledger import LedgerStore, Spend, TenantSpend
from penstock.store.refresher import Refresher
from penstock.types import Caller


class QuotaBook:
    def __init__(
        self, ledger: LedgerStore, *, refresh_s: float = 5.0, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._ledger = ledger
        self._refresh_s = refresh_s
        self._clock = clock
        self._period = _periods(clock())
        self._spend: dict[str, TenantSpend] = {}
        self._refresher = Refresher("quotas", self.refresh, refresh_s)

    def check(self, caller: Caller) -> None:
        limits = caller.tenant_limits
        budgets = (limits.daily_tokens, limits.monthly_tokens, limits.daily_cost, limits.monthly_cost)
        if all(b is None for b in budgets):
            return
        spend = self._current(caller.tenant)
        for used, budget, what in (
            (spend.day.tokens, limits.daily_tokens, "daily token"),
            (spend.month.tokens, limits.monthly_tokens, "monthly token"),
            (spend.day.cost, limits.daily_cost, "daily cost"),
            (spend.month.cost, limits.monthly_cost, "monthly cost"),
        ):
            if budget is not None and used >= budget:
                raise QuotaExceeded(
                    f"tenant '{caller.tenant}' has used its {what} budget ({used:g} of {budget:g})",
                    retry_after_s=self._until_reset(what),
                )

    def add(self, tenant: str, tokens: int, cost: float) -> None:
        spend = self._current(tenant)
        spend.day.add(tokens, cost)
        spend.month.add(tokens, cost)

    async def refresh(self) -> None:
        period = _periods(self._clock())
        reported = await self._ledger.tenant_spend(period[0].date(), period[1].date())
        self._period, self._spend = period, reported

    async def start(self) -> None:
        await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    def _current(self, tenant: str) -> TenantSpend:
        period = _periods(self._clock())
        if period != self._period:  # a new day or month began: its spend starts from zero
            for spend in self._spend.values():
                spend.day = Spend()
                if period[1] != self._period[1]:
                    spend.month = Spend()
            self._period = period
        return self._spend.setdefault(tenant, TenantSpend())

    def _until_reset(self, what: str) -> float:
        now = self._clock()
        day, month = _periods(now)
        if what.startswith("daily"):
            return (day + timedelta(days=1) - now).total_seconds()
        return ((month + timedelta(days=32)).replace(day=1) - now).total_seconds()


def _periods(now: datetime) -> tuple[datetime, datetime]:
    """The start of the UTC day and of the calendar month that hold `now`."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day, day.replace(day=1)
