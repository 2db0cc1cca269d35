"""The serving benchmark's load generator and figures: SLOs, lengths, percentiles, goodput, refusals timed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from penstock.bench.instant_upstream import STREAM, response
from penstock.bench.serving import (
    OUTPUT_BOUNDS,
    PROMPT_BOUNDS,
    Outcome,
    Run,
    ServeRequest,
    Slo,
    Target,
    drive,
    from_jsonl,
    percentile,
    refusal_reason,
    sharegpt_like,
)
from penstock.engine.loader import LoadedModel

REFUSAL = json.dumps(
    {"error": {"message": "the deployment 'm' is overloaded: the estimated wait of 3.0 s is more than the 1.0 s"}}
).encode()


def test_an_slo_is_read_from_its_flag_and_judges_each_request() -> None:
    slo = Slo.parse("ttft_ms=500, tpot_ms=50")
    assert (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms) == (500, 50, None) and str(slo) == "ttft_ms=500,tpot_ms=50"
    for wrong in ("ttft=5", "ttft_ms=", "goodput_ms=3"):
        with pytest.raises(ValueError):
            Slo.parse(wrong)
    fast = Outcome(200, ttft_s=0.4, e2e_s=0.4 + 9 * 0.04, output_tokens=10)
    assert fast.tpot_s == pytest.approx(0.04) and slo.met(fast)
    assert not slo.met(Outcome(200, ttft_s=0.6, e2e_s=0.9, output_tokens=10))  # first token too late
    assert not slo.met(Outcome(200, ttft_s=0.1, e2e_s=0.1 + 9 * 0.06, output_tokens=10))  # tokens too slow
    assert not slo.met(Outcome(429, e2e_s=0.003))
    assert not slo.met(Outcome(200, ttft_s=0.1, e2e_s=0.2, output_tokens=3, error="deadline_exceeded"))
    assert slo.longest_s(100) == pytest.approx(0.5 + 5.0)


def test_lengths_are_seeded_sharegpt_like_and_bounded(loaded: LoadedModel) -> None:
    requests = sharegpt_like(loaded.tokenizer, 200, seed=1)
    assert requests == sharegpt_like(loaded.tokenizer, 200, seed=1)
    assert requests != sharegpt_like(loaded.tokenizer, 200, seed=2)
    prompts, outputs = [r.prompt_tokens for r in requests], [r.output_tokens for r in requests]
    assert PROMPT_BOUNDS[0] <= min(prompts) and max(prompts) <= PROMPT_BOUNDS[1]
    assert OUTPUT_BOUNDS[0] <= min(outputs) and max(outputs) <= OUTPUT_BOUNDS[1]
    assert percentile(prompts, 50) < sum(prompts) / len(prompts)  # a long tail, as ShareGPT's
    assert all(r.prompt.strip() for r in requests)


def test_a_dataset_file_gives_the_requests(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"prompt": "hello", "output_tokens": 8}\n\n{"prompt": "bye", "output_tokens": 2, "prompt_tokens": 1}\n'
    )
    assert from_jsonl(path) == [ServeRequest("hello", 0, 8), ServeRequest("bye", 1, 2)]
    path.write_text('{"prompt": "no length"}\n')
    with pytest.raises(ValueError, match=r"set\.jsonl:1"):
        from_jsonl(path)


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50, 99, 100)
    assert percentile([7.0], 99) == 7.0


def test_goodput_counts_requests_that_met_the_slo_over_the_window() -> None:
    slo = Slo(ttft_ms=100)
    outcomes = (
        Outcome(200, ttft_s=0.05, e2e_s=0.5, output_tokens=5, itl_s=[0.1] * 4),
        Outcome(200, ttft_s=0.5, e2e_s=1.0, output_tokens=5),
        Outcome(429, e2e_s=0.004, retry_after="2", error="wait"),
        Outcome(error="ConnectError"),
    )
    summary = Run(rate=2.0, duration_s=2.0, outcomes=outcomes).summary(slo)
    assert (summary["requests"], summary["completed"], summary["refused"], summary["failed"]) == (4, 2, 1, 1)
    assert summary["good"] == 1 and summary["goodput_rps"] == 0.5 and summary["throughput_rps"] == 1.0
    assert summary["refused_wait"] == 1 and summary["refused_with_retry_after"] == 1
    assert summary["refusal_p99_ms"] == pytest.approx(4.0) and summary["itl_p50_ms"] == pytest.approx(100)


def test_a_refusal_is_read_for_its_reason() -> None:
    assert refusal_reason(REFUSAL) == "wait"
    assert refusal_reason(b"not json") == "unreadable"
    assert refusal_reason(json.dumps({"error": {"message": "rate limit"}}).encode()) == "other"


@pytest.fixture
async def server() -> AsyncIterator[int]:
    """Streams a one-token answer, and refuses every third request with a 429 and Retry-After."""
    served = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while not reader.at_eof():
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            served += 1
            if served % 3 == 0:
                head = f"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: {len(REFUSAL)}\r\n\r\n"
                writer.write(head.encode() + REFUSAL)
            else:
                writer.write(response(STREAM, "text/event-stream"))
            await writer.drain()
        writer.close()

    listening = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with listening:
        yield listening.sockets[0].getsockname()[1]


async def test_drive_sends_poisson_arrivals_and_times_each_answer(server: int) -> None:
    target = Target(f"http://127.0.0.1:{server}/v1", "key", "m")
    requests = [ServeRequest("hello", 1, 4)]
    run = await drive(target, requests, rate=200.0, duration_s=0.3, drain_s=5.0, seed=0)
    assert 20 <= len(run.outcomes) <= 120  # 60 expected
    answered = [o for o in run.outcomes if o.status == 200]
    refused = [o for o in run.outcomes if o.status == 429]
    assert len(refused) == len(run.outcomes) // 3
    assert all(o.ok and o.output_tokens == 1 and o.ttft_s is not None for o in answered)
    assert all(o.retry_after == "2" and o.error == "wait" and o.e2e_s is not None for o in refused)
    again = await drive(target, requests, 200.0, 0.3, 5.0, seed=0)
    assert len(again.outcomes) == len(run.outcomes)  # the arrivals are seeded
