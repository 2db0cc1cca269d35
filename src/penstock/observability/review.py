"""Review sampling: a configured fraction of answered requests, redacted, kept for people to read.

The draw happens when a request is settled and costs it nothing more: drawn requests wait in a
bounded list (beyond `max_pending` a draw is skipped, never queued without end), and every
`flush_s` a background task redacts them and writes them in one statement. Written one by one, a
sample cost the gateway about 1.6 ms of CPU (a pooled connection, a transaction, its round trips):
at the default rate of 1% that was 2-3% of its throughput (bench gateway's method, 2-core machine).
A failed write drops its batch: a lost sample is a smaller review set, not a failed request. Only
admin keys read the samples back (GET /admin/review, `penstock review sample`).
"""

from __future__ import annotations

import asyncio
import random
from contextlib import suppress
from dataclasses import dataclass

import structlog

from penstock.observability.redaction import redact
from penstock.store.review import ReviewSample, ReviewStore
from penstock.types import Prepared

log = structlog.get_logger("penstock.review")
_REDACTED_AT_ONCE = 50


@dataclass(frozen=True, slots=True)
class _Drawn:
    prepared: Prepared
    route: str
    completion: str


class ReviewSampler:
    def __init__(
        self,
        store: ReviewStore,
        rate: float,
        seed: int | None = None,
        *,
        flush_s: float = 1.0,
        max_pending: int = 1000,
    ) -> None:
        self._store = store
        self._rate = rate
        self._random = random.Random(seed)
        self._flush_s = flush_s
        self._max_pending = max_pending
        self._pending: list[_Drawn] = []
        self._task: asyncio.Task[None] | None = None
        self.skipped = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, prepared: Prepared, route: str, completion: str) -> None:
        if self._rate <= 0 or self._random.random() >= self._rate:
            return
        if len(self._pending) >= self._max_pending:
            self.skipped += 1
            if self.skipped % 1000 == 1:
                log.warning("review_samples_skipped", skipped=self.skipped, max_pending=self._max_pending)
            return
        self._pending.append(_Drawn(prepared, route, completion))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="penstock-review")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the task and write what was drawn, giving up after `timeout_s`."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=timeout_s)
            self._task = None
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.flush()

    async def flush(self) -> None:
        drawn, self._pending = self._pending, []
        if not drawn:
            return
        try:
            samples: list[ReviewSample] = []
            for start in range(0, len(drawn), _REDACTED_AT_ONCE):
                samples += [_sample(d) for d in drawn[start : start + _REDACTED_AT_ONCE]]
                await asyncio.sleep(0)  # long prompts take a while to redact: requests go on in between
            await self._store.insert(samples)
        except asyncio.CancelledError:  # a stop during the write: stop() writes them again (a duplicate is skipped)
            self._pending[:0] = drawn
            raise
        except Exception as exc:  # a lost sample is a smaller review set, not a failed request
            log.warning("review_samples_failed", samples=len(drawn), error_type=type(exc).__name__)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            await self.flush()


def _sample(drawn: _Drawn) -> ReviewSample:
    request = drawn.prepared.request
    if request.raw_prompt is not None:
        prompt = [{"role": "prompt", "content": redact(request.raw_prompt)}]
    else:
        prompt = [{"role": m.role, "content": redact(m.content)} for m in request.messages]
    deployment = drawn.prepared.decision.deployment
    return ReviewSample(
        request.request_id, request.caller.tenant, deployment, drawn.route, prompt, redact(drawn.completion)
    )
