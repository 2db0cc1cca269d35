"""A deployment's queue: slots up to its concurrency, tiers, bounds, the wait estimate and shedding."""

from __future__ import annotations

import asyncio
import time

import pytest

from penstock.config import QueueConfig
from penstock.errors import Overloaded
from penstock.router.deployment_queue import FIRST_SLOTS, MIN_SAMPLES, DeploymentQueue, Rates, Slot, SlotLimit
from penstock.types import Caller, ChatRequest, RequestPriority, SamplingParams, TokenEvent, Usage


def request(priority: RequestPriority = "interactive", deadline: float | None = None) -> ChatRequest:
    sampling = SamplingParams(max_tokens=100)
    return ChatRequest("r", "m", (), sampling, Caller("k", "t"), priority=priority, deadline=deadline)


def queue(concurrency: int = 1, **config: object) -> DeploymentQueue:
    return DeploymentQueue("big", QueueConfig.model_validate(config), concurrency)


def measured(queue: DeploymentQueue, prefill_tps: float, decode_tps: float, output_tokens: int) -> None:
    """Rates as if MIN_SAMPLES requests of 100 prompt tokens had been served at these speeds."""
    for _ in range(MIN_SAMPLES):
        queue.rates.record(100, output_tokens, 100 / prefill_tps, (output_tokens - 1) / decode_tps)


async def waiting(queue: DeploymentQueue, count: int) -> None:
    deadline = time.monotonic() + 5
    while queue.waiting() < count:
        assert time.monotonic() < deadline, f"{queue.waiting()} waiting, not {count}"
        await asyncio.sleep(0)


async def test_slots_up_to_the_concurrency_then_first_come_first_served() -> None:
    line = queue(concurrency=2)
    first, second = await line.enter(10, request()), await line.enter(10, request())
    third = asyncio.create_task(line.enter(10, request()))
    fourth = asyncio.create_task(line.enter(10, request()))
    await waiting(line, 2)
    assert (line.running, line.load) == (2, 4)
    second.release()
    granted = await third
    assert not fourth.done() and line.running == 2
    second.release()  # a second release of the same slot frees nothing more
    assert not fourth.done()
    first.release()
    await fourth
    granted.release()
    assert line.running == 1 and line.waiting() == 0


async def test_interactive_requests_go_before_batch_ones_that_came_earlier() -> None:
    line = queue()
    held = await line.enter(10, request())
    batch = asyncio.create_task(line.enter(10, request("batch")))
    await waiting(line, 1)
    interactive = asyncio.create_task(line.enter(10, request()))
    await waiting(line, 2)
    assert (line.waiting("interactive"), line.waiting("batch")) == (1, 1)
    held.release()
    (await interactive).release()
    await batch


async def test_a_full_queue_sheds_its_newest_batch_request_for_an_interactive_one() -> None:
    line = queue(max_size=2)
    held = await line.enter(10, request())
    older = asyncio.create_task(line.enter(10, request("batch")))
    newer = asyncio.create_task(line.enter(10, request("batch")))
    await waiting(line, 2)
    with pytest.raises(Overloaded) as full:  # another batch request finds the queue full: refused at once
        await line.enter(10, request("batch"))
    assert full.value.reason == "full" and full.value.headers()["Retry-After"] == "1"
    interactive = asyncio.create_task(line.enter(10, request()))
    with pytest.raises(Overloaded) as shed:
        await newer
    assert shed.value.reason == "shed" and shed.value.status == 429
    assert not older.done() and line.waiting() == 2
    held.release()
    (await interactive).release()
    (await older).release()
    assert line.refused == {"full": 1, "shed": 1}


async def test_a_full_queue_of_interactive_requests_refuses_the_next() -> None:
    line = queue(max_size=1)
    held = await line.enter(10, request())
    ahead = asyncio.create_task(line.enter(10, request()))
    await waiting(line, 1)
    with pytest.raises(Overloaded, match="queue holds 1 requests"):
        await line.enter(10, request())
    held.release()
    await ahead


async def test_a_request_waits_at_most_max_wait_s() -> None:
    line = queue(max_wait_s=0.05)
    held = await line.enter(10, request())
    began = time.monotonic()
    with pytest.raises(Overloaded) as timed_out:
        await line.enter(10, request())
    assert timed_out.value.reason == "timeout" and time.monotonic() - began >= 0.05
    assert line.waiting() == 0  # it left the queue
    held.release()
    assert line.running == 0


def test_rates_are_moving_averages_of_what_was_served() -> None:
    rates = Rates()
    assert rates.cost(1000, SamplingParams(max_tokens=100)) == 0.0  # nothing known: nothing estimated
    for _ in range(MIN_SAMPLES):
        rates.record(200, 51, 0.1, 2.5)  # 2,000 prompt tokens/s, 20 tokens/s after the first
    assert rates.prefill_tps == pytest.approx(2000) and rates.decode_tps == pytest.approx(20)
    assert rates.cost(400, SamplingParams(max_tokens=100)) == pytest.approx(0.2 + 50 / 20)  # as served: 51 tokens
    assert rates.cost(400, SamplingParams()) == pytest.approx(0.2 + 50 / 20)
    assert rates.cost(400, SamplingParams(max_tokens=10)) == pytest.approx(0.2 + 9 / 20)  # never more than allowed
    assert rates.cost(400, SamplingParams(max_tokens=100, ignore_eos=True)) == pytest.approx(0.2 + 99 / 20)
    assert rates.cost(400, SamplingParams(max_tokens=10, n=2)) == pytest.approx(0.2 + 18 / 20)
    rates.record(200, 1, 0.1, 0.0)  # one token: nothing to time decoding by, not counted
    assert rates.samples == MIN_SAMPLES


async def test_the_wait_is_the_work_ahead_played_out_over_the_slots() -> None:
    line = queue(concurrency=2, max_size=10)
    measured(line, prefill_tps=1000, decode_tps=10, output_tokens=11)  # 100 + 10 tokens: 0.1 s + 1 s a request
    assert line.estimate(0) == 0.0  # a slot is free
    slots = [await line.enter(100, request()), await line.enter(100, request())]
    assert line.estimate(0) == pytest.approx(1.1, abs=0.05)  # the first to free its slot
    ahead = [asyncio.create_task(line.enter(100, request())) for _ in range(3)]
    await waiting(line, 3)
    # Both slots free at 1.1; the three ahead start at 1.1, 1.1 and 2.2, so slots free at 2.2 and 3.3.
    assert line.estimate(0) == pytest.approx(2.2, abs=0.05)
    batch = asyncio.create_task(line.enter(100, request("batch")))
    await waiting(line, 4)
    assert line.estimate(0) == pytest.approx(2.2, abs=0.05)  # batch waiting does not delay interactive
    assert line.estimate(1) == pytest.approx(3.3, abs=0.05)
    for task in [*ahead, batch]:
        task.cancel()
    for slot in slots:
        slot.release()


async def test_a_request_that_could_not_start_in_time_is_refused_at_once() -> None:
    line = queue(concurrency=1, max_wait_s=2)
    measured(line, prefill_tps=1000, decode_tps=10, output_tokens=11)
    held = await line.enter(100, request())
    ahead = asyncio.create_task(line.enter(100, request()))
    await waiting(line, 1)
    began = time.monotonic()
    with pytest.raises(Overloaded) as refused:  # starts in 2.2 s: more than max_wait_s
        await line.enter(100, request())
    assert refused.value.reason == "wait" and time.monotonic() - began < 0.02
    assert refused.value.headers()["Retry-After"] == "3"  # 2.2 s, rounded up
    with pytest.raises(Overloaded, match=r"1\.0 s allowed"):  # its own deadline is nearer still
        await line.enter(100, request(deadline=time.monotonic() + 1.0))
    held.release()
    (await ahead).release()
    (await line.enter(100, request())).release()  # the queue empty again: a slot at once


async def test_a_cancelled_waiter_leaves_the_queue_and_gives_back_a_slot_granted_meanwhile() -> None:
    line = queue()
    held = await line.enter(10, request())
    gone = asyncio.create_task(line.enter(10, request()))
    await waiting(line, 1)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert line.waiting() == 0
    granted_late = asyncio.create_task(line.enter(10, request()))
    await waiting(line, 1)
    held.release()  # the slot goes to the waiter ...
    granted_late.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await granted_late
    assert line.running == 0 and line.waiting() == 0


async def test_a_slot_times_its_answer_for_the_rates() -> None:
    line = queue()
    for _ in range(MIN_SAMPLES):
        slot = await line.enter(50, request())
        slot.observe(TokenEvent("a", (1,)))
        for _ in range(10):
            slot.observe(TokenEvent("b", (2,)))
        slot.first = time.monotonic() - 0.5  # as if ten more tokens had taken 0.5 s ...
        slot.began = slot.first - 0.1  # ... and the first 0.1 s
        slot.release()
    assert line.rates.known
    assert line.rates.prefill_tps == pytest.approx(50 / 0.1, rel=0.2)
    assert line.rates.decode_tps == pytest.approx(10 / 0.5, rel=0.2)
    assert line.rates.output_tokens == pytest.approx(11)


async def test_disabled_it_admits_everything_at_once() -> None:
    line = queue(enabled=False)
    slots: list[Slot] = [await line.enter(10, request()) for _ in range(5)]
    assert line.running == 5 and line.waiting() == 0
    for slot in slots:
        slot.release()


def test_under_a_tpot_target_the_open_slots_follow_the_time_per_token() -> None:
    limit = SlotLimit(most=16, target_tpot_s=0.1)
    assert limit.open == FIRST_SLOTS
    limit.after(0.05, busy=False)
    assert limit.open == FIRST_SLOTS  # fast, but nobody was kept waiting: no reason to open more
    for _ in range(20):
        limit.after(0.05, busy=True)
    assert limit.open == 16  # never past the concurrency
    limit.after(0.2, busy=True)
    assert limit.open == 12  # a fifth fewer ...
    for _ in range(2):
        limit.after(0.2, busy=True)
    assert limit.open == 12  # ... and no further cut until a quarter of the open slots' answers are in
    limit.after(0.2, busy=True)
    assert limit.open == 9
    limit.after(0.09, busy=True)
    assert limit.open == 9  # under the target, not by the headroom: held
    assert SlotLimit(most=16, target_tpot_s=None).open == 16


async def test_the_queue_opens_slots_as_answers_come_fast_enough() -> None:
    line = queue(concurrency=8, target_tpot_ms=100)
    measured(line, prefill_tps=1000, decode_tps=100, output_tokens=11)  # 10 ms a token: well under
    slots = [await line.enter(10, request()) for _ in range(FIRST_SLOTS)]
    waiter = asyncio.create_task(line.enter(10, request()))
    await waiting(line, 1)
    slots[0].release()  # (timed as an answer that never began: it leaves the rates alone)
    slots[1].first = slots[1].began
    slots[1].tokens = 2
    slots[1].release()  # fast, with someone waiting: one more slot
    assert line.limit.open == FIRST_SLOTS + 1
    (await waiter).release()
    for slot in slots[2:]:
        slot.release()


async def test_the_estimate_is_calibrated_by_the_waits_that_came_true() -> None:
    line = queue(concurrency=1, max_wait_s=5)
    measured(line, prefill_tps=1000, decode_tps=100, output_tokens=11)  # 0.2 s a request, as estimated
    held = await line.enter(100, request())
    for _ in range(MIN_SAMPLES):  # each waits twice what was estimated for it
        estimated = line.estimate(0)
        waiter = asyncio.create_task(line.enter(100, request()))
        await waiting(line, 1)
        line._waiting[0][0].arrived -= 2 * estimated  # as if it had waited that long: no sleep
        held.release()
        held = await waiter
    assert line.calibration == pytest.approx(2, rel=0.3)
    assert line.estimate(0) == pytest.approx(line.calibration * line._played_out(0), rel=0.05)
    held.release()


async def test_check_answers_as_enter_would_without_taking_a_place() -> None:
    line = queue(max_size=1)
    assert line.check(request()) == 0.0  # a slot free
    held = await line.enter(10, request())
    assert line.check(request()) == 0.0 and line.waiting() == 0  # it would wait: nothing estimated yet
    batch = asyncio.create_task(line.enter(10, request("batch")))
    await waiting(line, 1)
    with pytest.raises(Overloaded, match="queue holds 1"):
        line.check(request("batch"))  # full, and nothing a batch request could shed
    line.check(request())  # an interactive one would shed the batch request: not refused
    assert line.waiting() == 1 and not batch.done()  # and nothing was shed by asking
    held.release()
    (await batch).release()


def test_a_remote_answer_is_counted_by_its_text_then_by_its_usage() -> None:
    slot = Slot(None, 10, SamplingParams())
    for text in ("Hel", "lo", ""):
        slot.observe(TokenEvent(text, ()))
    assert slot.tokens == 2
    slot.observe(TokenEvent("", (), "stop", usage=Usage(10, 3)))
    assert slot.tokens == 3  # the upstream's own count stands
