"""Review sampling: a configured fraction of answered requests, redacted, kept for people to read.

The draw happens when a request is settled; the redaction and the write run off the request path
(a background task per sample, a bounded number in flight: beyond it a sample is skipped, never
queued without end). Only admin keys read the samples back (GET /admin/review, `penstock review sample`).
"""

from __future__ import annotations

import asyncio
import random

import structlog

from penstock.observability.redaction import redact
from penstock.pipeline import Prepared
from penstock.store.review import ReviewSample, ReviewStore

log = structlog.get_logger("penstock.review")
MAX_IN_FLIGHT = 64


class ReviewSampler:
    def __init__(self, store: ReviewStore, rate: float, seed: int | None = None) -> None:
        self._store = store
        self._rate = rate
        self._random = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(self, prepared: Prepared, route: str, completion: str) -> None:
        if self._rate <= 0 or self._random.random() >= self._rate or len(self._tasks) >= MAX_IN_FLIGHT:
            return
        task = asyncio.create_task(self._write(prepared, route, completion))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)

    async def _write(self, prepared: Prepared, route: str, completion: str) -> None:
        request = prepared.request
        if request.raw_prompt is not None:
            prompt = [{"role": "prompt", "content": redact(request.raw_prompt)}]
        else:
            prompt = [{"role": m.role, "content": redact(m.content)} for m in request.messages]
        sample = ReviewSample(
            request.request_id, request.caller.tenant, prepared.decision.deployment, route, prompt, redact(completion)
        )
        try:
            await self._store.insert(sample)
        except Exception as exc:  # a lost sample is a smaller review set, not a failed request
            log.warning("review_sample_failed", error_type=type(exc).__name__)
