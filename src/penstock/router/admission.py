"""Admission: may this request run now? Its tenant's budgets first, then the rate limits.

Runs once the prompt is built (the tokens a request reserves are known only then) and before any
generation; what it takes is given back when the request is settled: the tokens not used, the
in-flight slot. A refusal is a 429 (insufficient_quota, or rate_limit_exceeded with Retry-After).
"""

from __future__ import annotations

from penstock.router.limiter import RateLimiter, Ticket
from penstock.router.quotas import QuotaBook
from penstock.types import Caller


class Admission:
    def __init__(self, limiter: RateLimiter, quotas: QuotaBook | None = None) -> None:
        """Without a book (no database: an engine worker, a bare server) there are no budgets to check."""
        self._limiter = limiter
        self._quotas = quotas

    async def admit(self, caller: Caller, request_id: str, tokens: int) -> Ticket:
        """Admitted with `tokens` reserved (prompt + every choice's max_tokens), or QuotaExceeded/RateLimited."""
        if self._quotas is not None:
            self._quotas.check(caller)
        return await self._limiter.admit(caller, request_id, tokens)

    def release(self, ticket: Ticket, used_tokens: int) -> None:
        """The request is over: its unused tokens refunded and its slot freed, off the response path."""
        self._limiter.finish(ticket, used_tokens)
