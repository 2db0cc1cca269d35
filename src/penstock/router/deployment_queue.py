"""A deployment's queue: at most `concurrency` requests at the deployment at once, the rest waiting here,
interactive before batch and in arrival order within a tier, at most `max_size` of them, none for longer
than `max_wait_s`.

A request that could not start in time is refused as it arrives (429, Retry-After the estimated wait),
not after waiting for nothing: past capacity a queue without this turns every request into a late one.
The wait is estimated from the work ahead, in seconds of a slot: a request costs its prompt tokens ÷ the
measured prefill rate + its expected output tokens ÷ the measured decode rate (both per slot, moving
averages over this deployment's recent requests). The slots are played out: each running request frees
its slot when its expected cost has run, each queued request ahead takes the first slot to free, and the
newcomer starts at the next. Until MIN_SAMPLES requests have been measured nothing is estimated, and only
the queue's bounds refuse.

Batch is shed first: it waits behind every interactive request, whenever that arrived, and a full queue
makes room for an interactive arrival by refusing its newest batch request.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from penstock.config import QueueConfig
from penstock.errors import Overloaded
from penstock.types import ChatRequest, RequestPriority, TokenEvent

TIERS: dict[RequestPriority, int] = {"interactive": 0, "batch": 1}
MIN_SAMPLES = 8
SMOOTHING = 0.2  # each measured request's weight in the moving averages


class Rates:
    """A slot's prefill and decode speeds and a request's output length, as this deployment has served them."""

    def __init__(self) -> None:
        self.samples = 0
        self.prefill_tps = 0.0  # prompt tokens per second of a slot, to the first token
        self.decode_tps = 0.0  # output tokens per second of a slot, after the first
        self.output_tokens = 0.0

    @property
    def known(self) -> bool:
        return self.samples >= MIN_SAMPLES

    def cost(self, prompt_tokens: int, max_output: int) -> float:
        """Seconds of a slot a request is expected to take (0 until the rates are known)."""
        if not self.known:
            return 0.0
        after_first = max(0.0, min(max_output, self.output_tokens) - 1)  # the first comes with the prefill
        return prompt_tokens / self.prefill_tps + after_first / self.decode_tps

    def record(self, prompt_tokens: int, output_tokens: int, prefill_s: float, decode_s: float) -> None:
        if output_tokens < 2 or prefill_s <= 0 or decode_s <= 0:
            return  # nothing to time decoding by (or an answer that never began)
        weight = 1.0 if self.samples == 0 else SMOOTHING
        self.prefill_tps += weight * (prompt_tokens / prefill_s - self.prefill_tps)
        self.decode_tps += weight * ((output_tokens - 1) / decode_s - self.decode_tps)
        self.output_tokens += weight * (output_tokens - self.output_tokens)
        self.samples += 1


@dataclass(eq=False, slots=True)
class Slot:
    """A place at the deployment, held until the answer ends; it times the answer for the rates."""

    queue: DeploymentQueue | None
    cost: float
    prompt_tokens: int
    began: float = field(default_factory=time.monotonic)
    first: float | None = None
    tokens: int = 0

    def observe(self, event: TokenEvent) -> None:
        if self.first is None:
            self.first = time.monotonic()
        self.tokens += len(event.token_ids)

    def release(self) -> None:
        queue, self.queue = self.queue, None
        if queue is not None:  # once, whoever calls it first
            queue.released(self)


@dataclass(eq=False, slots=True)
class _Waiter:
    cost: float
    prompt_tokens: int
    granted: asyncio.Future[Slot]


class DeploymentQueue:
    def __init__(self, name: str, config: QueueConfig, concurrency: int) -> None:
        self.name = name
        self.config = config
        self.concurrency = concurrency
        self.rates = Rates()
        self.refused: Counter[str] = Counter()  # by reason: full, wait, shed, timeout
        self._running: set[Slot] = set()
        self._waiting: tuple[deque[_Waiter], ...] = tuple(deque() for _ in TIERS)

    @property
    def running(self) -> int:
        return len(self._running)

    def waiting(self, priority: RequestPriority | None = None) -> int:
        queues = self._waiting if priority is None else (self._waiting[TIERS[priority]],)
        return sum(len(q) for q in queues)

    @property
    def load(self) -> int:
        """Requests at the deployment or waiting for it (what a route's overflow marks compare with)."""
        return len(self._running) + self.waiting()

    async def enter(self, prompt_tokens: int, request: ChatRequest) -> Slot:
        """A slot for the request, now or once one frees; raises Overloaded if it cannot have one in time."""
        sampling = request.sampling
        cost = self.rates.cost(prompt_tokens, (sampling.max_tokens or 0) * sampling.n)
        if not self.config.enabled or (len(self._running) < self.concurrency and not self.waiting()):
            return self._grant(cost, prompt_tokens)
        tier = TIERS[request.priority]
        if self.waiting() >= self.config.max_size and not (tier == 0 and self._shed_batch()):
            raise self._refusal("full", f"its queue holds {self.waiting()} requests", self.estimate(tier))
        wait = self.estimate(tier)
        allowed = self.config.max_wait_s
        if request.deadline is not None:
            allowed = min(allowed, request.deadline - time.monotonic())
        if wait > allowed:
            why = f"the estimated wait of {wait:.1f} s is more than the {allowed:.1f} s allowed"
            raise self._refusal("wait", why, wait)
        waiter = _Waiter(cost, prompt_tokens, asyncio.get_running_loop().create_future())
        self._waiting[tier].append(waiter)
        self._admit_waiting()  # (a slot freed by a changed concurrency is taken at once)
        return await self._wait(waiter, tier)

    async def _wait(self, waiter: _Waiter, tier: int) -> Slot:
        try:
            async with asyncio.timeout(self.config.max_wait_s):
                return await asyncio.shield(waiter.granted)
        except TimeoutError:
            self._leave(waiter, tier)
            limit = f"it waited the {self.config.max_wait_s:g} s allowed"
            raise self._refusal("timeout", limit, self.estimate(tier)) from None
        except asyncio.CancelledError:  # the client left, or its deadline passed
            self._leave(waiter, tier)
            raise

    def _leave(self, waiter: _Waiter, tier: int) -> None:
        """A waiter gone before it started: out of the queue, or its slot (granted meanwhile) given back."""
        if waiter in self._waiting[tier]:
            self._waiting[tier].remove(waiter)
        elif waiter.granted.done() and not waiter.granted.cancelled() and waiter.granted.exception() is None:
            waiter.granted.result().release()

    def estimate(self, tier: int) -> float:
        """Seconds until a request of `tier` arriving now would start, the slots played out."""
        now = time.monotonic()
        frees = [max(0.0, s.cost - (now - s.began)) for s in self._running]
        frees += [0.0] * max(0, self.concurrency - len(frees))
        heapq.heapify(frees)
        for queue in self._waiting[: tier + 1]:
            for waiter in queue:
                heapq.heapreplace(frees, frees[0] + waiter.cost)
        return frees[0]

    def released(self, slot: Slot) -> None:
        self._running.discard(slot)
        if slot.first is not None:
            ended = time.monotonic()
            self.rates.record(slot.prompt_tokens, slot.tokens, slot.first - slot.began, ended - slot.first)
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while len(self._running) < self.concurrency:
            queue = next((q for q in self._waiting if q), None)
            if queue is None:
                return
            waiter = queue.popleft()
            if not waiter.granted.done():
                waiter.granted.set_result(self._grant(waiter.cost, waiter.prompt_tokens))

    def _grant(self, cost: float, prompt_tokens: int) -> Slot:
        slot = Slot(self, cost, prompt_tokens)
        self._running.add(slot)
        return slot

    def _shed_batch(self) -> bool:
        """Room for an interactive request: the newest waiting batch request refused (False if there is none)."""
        batch = self._waiting[TIERS["batch"]]
        if not batch:
            return False
        waiter = batch.pop()
        refusal = self._refusal("shed", "an interactive request took its place", self.estimate(TIERS["batch"]))
        waiter.granted.set_exception(refusal)
        return True

    def _refusal(self, reason: str, why: str, retry_after_s: float) -> Overloaded:
        self.refused[reason] += 1
        message = f"the deployment '{self.name}' is overloaded: {why}; retry later"
        return Overloaded(message, retry_after_s=retry_after_s, reason=reason)
