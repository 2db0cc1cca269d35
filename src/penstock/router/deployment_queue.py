"""A deployment's queue: at most `concurrency` requests at the deployment at once, the rest waiting here,
interactive before batch and in arrival order within a tier, at most `max_size` of them, none for longer
than `max_wait_s`.

A request that could not start in time is refused as it arrives (429, Retry-After the estimated wait),
not after waiting for nothing: past capacity a queue without this turns every request into a late one.
The wait is estimated from the work ahead, in seconds of a slot: a request costs its prompt tokens ÷ the
measured prefill rate + its expected output tokens ÷ the measured decode rate (both per slot, moving
averages over this deployment's recent requests, read when the estimate is made: a slot is slower the
more share the engine). The slots are played out: each running request frees its slot once the tokens it
has still to write are written, each queued request ahead takes the first slot to free, and the newcomer
starts at the next. Until MIN_SAMPLES requests have been measured nothing is estimated, and only
the queue's bounds refuse. The estimate is then calibrated by what came true: the waits recent requests had
over the waits estimated for them (one that timed out counts as having waited max_wait_s), at the worst of
the last CALIBRATION_SAMPLES: a request is let in only if even that error would start it in time, so
almost none wait to be refused (a refusal after waiting is the slow kind).

Batch is shed first: it waits behind every interactive request, whenever that arrived, and a full queue
makes room for an interactive arrival by refusing its newest batch request.

With a `target_tpot_ms`, fewer slots may be open than `concurrency`: on a CPU every sequence added to a
batch slows each step, so past the engine's knee more requests at once buy no throughput and only make
every answer slower. The open slots follow the measured time per output token (TCP's rule: one more after
an answer that came well under the target while all of them were taken, a fifth fewer while over it).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from penstock.config import QueueConfig
from penstock.errors import Overloaded
from penstock.types import ChatRequest, RequestPriority, SamplingParams, TokenEvent

TIERS: dict[RequestPriority, int] = {"interactive": 0, "batch": 1}
MIN_SAMPLES = 8
SMOOTHING = 0.2  # each measured request's weight in the moving averages
FIRST_SLOTS = 4  # open at first under a TPOT target; more as answers show there is room
HEADROOM = 0.8  # an answer this far under the target opens another slot
CUT = 0.8  # the open slots kept when over it
CALIBRATION_BOUNDS = (0.5, 4.0)
CALIBRATION_SAMPLES = 64  # the recent waits it reads
OVERDUE_SHARE = 0.1  # a request running past what was expected of it is taken to have this share of it left


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

    def output(self, sampling: SamplingParams) -> float:
        """The tokens a request is expected to write: as many as answers have had, within its max_tokens (all of
        them where the end-of-sequence token cannot stop it), for each of its choices."""
        cap = sampling.max_tokens
        each = cap if cap is not None and sampling.ignore_eos else min(cap or 1 << 30, self.output_tokens)
        return each * sampling.n

    def cost(self, prompt_tokens: int, sampling: SamplingParams) -> float:
        """Seconds of a slot a request is expected to take (0 until the rates are known)."""
        if not self.known:
            return 0.0
        after_first = max(0.0, self.output(sampling) - sampling.n)  # each choice's first comes with the prefill
        return prompt_tokens / self.prefill_tps + after_first / self.decode_tps

    def left(self, slot: Slot, now: float) -> float:
        """Seconds a running request is expected still to take: its prefill's rest, or the tokens still to write."""
        if not self.known:
            return 0.0
        if slot.first is None:
            cost = self.cost(slot.prompt_tokens, slot.sampling)
            return max(OVERDUE_SHARE * cost, cost - (now - slot.began))
        expected = self.output(slot.sampling)
        return max(OVERDUE_SHARE * expected, expected - slot.tokens) / self.decode_tps

    def record(self, prompt_tokens: int, output_tokens: int, prefill_s: float, decode_s: float) -> None:
        if output_tokens < 2 or prefill_s <= 0 or decode_s <= 0:
            return  # nothing to time decoding by (or an answer that never began)
        weight = 1.0 if self.samples == 0 else SMOOTHING
        self.prefill_tps += weight * (prompt_tokens / prefill_s - self.prefill_tps)
        self.decode_tps += weight * ((output_tokens - 1) / decode_s - self.decode_tps)
        self.output_tokens += weight * (output_tokens - self.output_tokens)
        self.samples += 1


class SlotLimit:
    """How many slots are open: all, or under a TPOT target the number that keeps answers within it."""

    def __init__(self, most: int, target_tpot_s: float | None) -> None:
        self.most = most
        self.target_s = target_tpot_s
        self.open = most if target_tpot_s is None else min(most, FIRST_SLOTS)
        self._since_cut = 0

    def after(self, tpot_s: float, busy: bool) -> None:
        """An answer ended with the deployment's time per token at `tpot_s`; `busy`: every open slot was taken.
        A cut waits for a quarter of the open slots' answers: one slow round is not counted as several."""
        if self.target_s is None:
            return
        self._since_cut += 1
        if tpot_s > self.target_s:
            if self._since_cut >= max(1, self.open // 4):
                self.open, self._since_cut = max(1, int(self.open * CUT)), 0
        elif tpot_s < HEADROOM * self.target_s and busy:
            self.open = min(self.most, self.open + 1)


@dataclass(eq=False, slots=True)
class Slot:
    """A place at the deployment, held until the answer ends; it times the answer for the rates."""

    queue: DeploymentQueue | None
    prompt_tokens: int
    sampling: SamplingParams
    began: float = field(default_factory=time.monotonic)
    first: float | None = None
    tokens: int = 0

    def observe(self, event: TokenEvent) -> None:
        if self.first is None:
            self.first = time.monotonic()
        # A remote engine's events carry text, not ids (one token each, as OpenAI streams), and its own count
        # of the whole answer on the last.
        self.tokens += len(event.token_ids) or (1 if event.text else 0)
        if event.usage is not None:
            self.tokens = event.usage.completion_tokens

    def release(self) -> None:
        queue, self.queue = self.queue, None
        if queue is not None:  # once, whoever calls it first
            queue.released(self)


@dataclass(eq=False, slots=True)
class _Waiter:
    prompt_tokens: int
    sampling: SamplingParams
    granted: asyncio.Future[Slot]
    estimated: float  # its wait as estimated before calibration
    arrived: float = field(default_factory=time.monotonic)


class DeploymentQueue:
    def __init__(self, name: str, config: QueueConfig, concurrency: int) -> None:
        self.name = name
        self.config = config
        self.concurrency = concurrency
        target = config.target_tpot_ms / 1000 if config.target_tpot_ms is not None else None
        self.limit = SlotLimit(concurrency, target)
        self.rates = Rates()
        self.calibration = 1.0  # waits had ÷ waits estimated, the worst of the recent ones
        self._ratios: deque[float] = deque(maxlen=CALIBRATION_SAMPLES)
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
        if self._takes_now():
            return self._grant(prompt_tokens, sampling)
        raw = self.check(request)
        tier = TIERS[request.priority]
        if self.waiting() >= self.config.max_size:
            self._shed_batch()  # (check found one to shed, or it would have refused)
        waiter = _Waiter(prompt_tokens, sampling, asyncio.get_running_loop().create_future(), raw)
        self._waiting[tier].append(waiter)
        self._admit_waiting()  # (a slot opened meanwhile is taken at once)
        return await self._wait(waiter, tier)

    def check(self, request: ChatRequest) -> float:
        """Raise Overloaded if the request would be refused now (its queue full, or its estimated wait past
        max_wait_s or its deadline); else its estimated wait before calibration. The pipeline asks before any
        work is done for a request, the queue again as the request enters it."""
        if self._takes_now():
            return 0.0
        tier = TIERS[request.priority]
        if self.waiting() >= self.config.max_size and not (tier == 0 and self._waiting[TIERS["batch"]]):
            raise self._refusal("full", f"its queue holds {self.waiting()} requests", self.estimate(tier))
        raw = self._played_out(tier)
        wait = raw * self.calibration
        allowed = self.config.max_wait_s
        if request.deadline is not None:
            allowed = min(allowed, request.deadline - time.monotonic())
        if wait > allowed:
            why = f"the estimated wait of {wait:.1f} s is more than the {allowed:.1f} s allowed"
            raise self._refusal("wait", why, wait)
        return raw

    def _takes_now(self) -> bool:
        return not self.config.enabled or (len(self._running) < self.limit.open and not self.waiting())

    async def _wait(self, waiter: _Waiter, tier: int) -> Slot:
        try:
            async with asyncio.timeout(self.config.max_wait_s):
                return await asyncio.shield(waiter.granted)
        except TimeoutError:
            self._leave(waiter, tier)
            self._calibrate(waiter, self.config.max_wait_s)
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
        """Seconds until a request of `tier` arriving now would start."""
        return self._played_out(tier) * self.calibration

    def _played_out(self, tier: int) -> float:
        """The wait the slots played out give, before calibration."""
        now = time.monotonic()
        ends = sorted(self.rates.left(slot, now) for slot in self._running)
        # With fewer slots open than requests running (a cut), the first to end free none: they drop out.
        frees = ends[max(0, len(ends) - self.limit.open) :] + [0.0] * max(0, self.limit.open - len(ends))
        heapq.heapify(frees)
        for queue in self._waiting[: tier + 1]:
            for waiter in queue:
                heapq.heapreplace(frees, frees[0] + self.rates.cost(waiter.prompt_tokens, waiter.sampling))
        return frees[0]

    def released(self, slot: Slot) -> None:
        busy = len(self._running) >= self.limit.open or self.waiting() > 0
        self._running.discard(slot)
        if slot.first is not None:
            ended = time.monotonic()
            self.rates.record(slot.prompt_tokens, slot.tokens, slot.first - slot.began, ended - slot.first)
            if self.rates.known:
                self.limit.after(1 / self.rates.decode_tps, busy)
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while len(self._running) < self.limit.open:
            queue = next((q for q in self._waiting if q), None)
            if queue is None:
                return
            waiter = queue.popleft()
            if not waiter.granted.done():
                waiter.granted.set_result(self._grant(waiter.prompt_tokens, waiter.sampling))
                self._calibrate(waiter, time.monotonic() - waiter.arrived)

    def _calibrate(self, waiter: _Waiter, waited: float) -> None:
        if waiter.estimated <= 0.01:  # (an estimate near nothing says nothing of the estimator's error)
            return
        self._ratios.append(waited / waiter.estimated)
        if len(self._ratios) >= MIN_SAMPLES:
            low, high = CALIBRATION_BOUNDS
            self.calibration = min(high, max(low, max(self._ratios)))

    def _grant(self, prompt_tokens: int, sampling: SamplingParams) -> Slot:
        slot = Slot(self, prompt_tokens, sampling)
        self._running.add(slot)
        return slot

    def _shed_batch(self) -> None:
        """Room for an interactive request: the newest waiting batch request refused."""
        waiter = self._waiting[TIERS["batch"]].pop()
        refusal = self._refusal("shed", "an interactive request took its place", self.estimate(TIERS["batch"]))
        waiter.granted.set_exception(refusal)

    def _refusal(self, reason: str, why: str, retry_after_s: float) -> Overloaded:
        self.refused[reason] += 1
        message = f"the deployment '{self.name}' is overloaded: {why}; retry later"
        return Overloaded(message, retry_after_s=retry_after_s, reason=reason)


def every_refused(model: str, refusals: list[Overloaded], what: str) -> Overloaded:
    """One answer for a request that every deployment it could go to refused: the soonest Retry-After."""
    wait = min(r.retry_after_s for r in refusals)
    return Overloaded(
        f"every deployment for '{model}' is overloaded ({what})", retry_after_s=wait, reason=refusals[0].reason
    )
