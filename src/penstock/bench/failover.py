"""`penstock bench failover`: a gateway in front of two `penstock worker` processes, steady streaming load,
and one worker killed (SIGKILL) partway through.

It reports how long the gateway took to take the dead worker out of rotation (its breaker open, read from
the gateway's /metrics), and what the clients saw: requests that failed before their first token (the
ladder should have moved them to the live worker: the target is 0), streams cut after it (those the dead
worker was writing: an error event and [DONE] each), and requests that hung (none may). With `recover`,
the worker then comes back on its port and the time until its breaker closes again is reported too.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from penstock.bench.workers import WorkerProcess, running_gateway, running_workers
from penstock.config import DEFAULT_MODEL_NAME

ADMIN_KEY = "sk-bench-failover-0123456789"
ROUTE = "chat"
CALLS = re.compile(r'penstock_upstream_calls_total\{deployment="workers",replica="[^"]+"\} (\S+)')
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "What is two plus two?",
    "Write one sentence about the sea.",
    "Which planet is closest to the sun?",
    "What do bees make?",
]


@dataclass(frozen=True, slots=True)
class FailoverOptions:
    concurrency: int = 6
    duration_s: float = 12.0
    kill_at_s: float = 4.0
    max_tokens: int = 24
    hang_after_s: float = 60.0  # a request with no end by then counts as hung
    recover: bool = False


@dataclass(frozen=True, slots=True)
class FailoverResult:
    requests: int
    ok: int
    failed_before_first_token: int
    streams_cut: int
    hung: int
    broken: int  # streams that ended without [DONE]
    calls_per_replica: list[int]  # before the kill: the load went to both
    ejected_after_s: float | None  # None: never ejected within the run
    recovered_after_s: float | None  # from the worker's restart being ready to its breaker closed
    ttft_p50_ms: float
    command: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_failover_bench(options: FailoverOptions) -> FailoverResult:
    with (
        running_workers(2) as workers,
        tempfile.TemporaryDirectory(prefix="penstock-failover-") as home,
        running_gateway(Path(home), gateway_config(workers), ADMIN_KEY) as gateway,
    ):
        return asyncio.run(_run(gateway.base, workers[1], options))


async def _run(base: str, victim: WorkerProcess, options: FailoverOptions) -> FailoverResult:
    outcomes: list[_Outcome] = []
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=None) as client:
        start = time.monotonic()
        stop_at = start + options.duration_s
        clients = [
            asyncio.create_task(_client(client, n, stop_at, options, outcomes)) for n in range(options.concurrency)
        ]
        await asyncio.sleep(options.kill_at_s)
        calls = [int(float(v)) for v in CALLS.findall((await client.get("/metrics")).text)]
        victim.kill()
        killed = time.monotonic()
        ejected = await _until_state(client, victim.url, 2, killed, timeout_s=options.duration_s)
        await asyncio.gather(*clients)
        recovered = await _recover(client, victim) if options.recover else None
    ttfts = sorted(o.ttft_s for o in outcomes if o.ttft_s is not None)
    return FailoverResult(
        requests=len(outcomes),
        ok=sum(o.status == "ok" for o in outcomes),
        failed_before_first_token=sum(o.status == "failed" for o in outcomes),
        streams_cut=sum(o.status == "cut" for o in outcomes),
        hung=sum(o.status == "hung" for o in outcomes),
        broken=sum(o.status == "broken" for o in outcomes),
        calls_per_replica=calls,
        ejected_after_s=None if ejected is None else round(ejected - killed, 3),
        recovered_after_s=recovered,
        ttft_p50_ms=round(ttfts[len(ttfts) // 2] * 1000, 1) if ttfts else 0.0,
        command=_command(options),
    )


@dataclass(slots=True)
class _Outcome:
    status: str  # ok, failed (before the first token), cut (after it), broken (no [DONE]), hung
    ttft_s: float | None = None


async def _client(
    client: httpx.AsyncClient, n: int, stop_at: float, options: FailoverOptions, outcomes: list[_Outcome]
) -> None:
    turn = 0
    while time.monotonic() < stop_at:
        question = f"{QUESTIONS[(n + turn) % len(QUESTIONS)]} (asked by client {n}, turn {turn})"
        turn += 1
        try:
            outcome = await asyncio.wait_for(_one(client, question, options.max_tokens), options.hang_after_s)
        except TimeoutError:
            outcome = _Outcome("hung")
        outcomes.append(outcome)


async def _one(client: httpx.AsyncClient, question: str, max_tokens: int) -> _Outcome:
    """One streamed question, judged: an error event before the first token is a failure, after it a cut
    stream; a stream that ends without [DONE] is broken (the gateway's fault, whatever the upstream did)."""
    body = {"model": ROUTE, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
    started, first, errored, done = time.monotonic(), None, False, False
    try:
        async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            if response.status_code != 200:
                return _Outcome("failed")
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    errored = errored or "error" in chunk
                    if first is None and any(c["delta"].get("content") for c in chunk.get("choices", ())):
                        first = time.monotonic() - started
    except httpx.HTTPError:
        done = False
    if not done:
        return _Outcome("broken", first)
    if errored:
        return _Outcome("cut" if first is not None else "failed", first)
    return _Outcome("ok", first)


async def _until_state(
    client: httpx.AsyncClient, replica: str, state: int, since: float, timeout_s: float
) -> float | None:
    """When the gateway's /metrics first showed `replica`'s breaker in `state` (polled every 20 ms)."""
    pattern = re.compile(
        rf'penstock_upstream_breaker_state\{{deployment="workers",replica="{re.escape(replica)}"\}} (\S+)'
    )
    while time.monotonic() - since < timeout_s:
        found = pattern.search((await client.get("/metrics")).text)
        if found and float(found.group(1)) == state:
            return time.monotonic()
        await asyncio.sleep(0.02)
    return None


async def _recover(client: httpx.AsyncClient, victim: WorkerProcess) -> float | None:
    victim.spawn()
    await asyncio.to_thread(victim.wait)
    ready = time.monotonic()

    async def ask() -> None:  # the half-open breaker closes on a successful call
        while True:
            await _one(client, QUESTIONS[0], 4)
            await asyncio.sleep(0.05)

    asker = asyncio.create_task(ask())
    try:
        closed = await _until_state(client, victim.url, 0, ready, timeout_s=30)
    finally:
        asker.cancel()
    return None if closed is None else round(closed - ready, 3)


def gateway_config(workers: list[WorkerProcess]) -> dict[str, Any]:
    """Both workers as one deployment's replicas, a route over it, checks every 250 ms."""
    upstream = {
        "urls": [w.url for w in workers],
        "model": DEFAULT_MODEL_NAME,
        "health": {"interval_s": 0.25, "timeout_s": 0.5},
        "timeouts": {"connect_s": 1, "first_token_s": 30, "between_tokens_s": 10},
    }
    return {
        "deployments": [{"name": "workers", "backend": "openai", "upstream": upstream}],
        "routes": [{"name": ROUTE, "ladder": ["workers"]}],
    }


def _command(options: FailoverOptions) -> str:
    parts = ["penstock bench failover", f"--concurrency {options.concurrency}", f"--duration {options.duration_s:g}"]
    parts += [f"--kill-at {options.kill_at_s:g}", f"--max-tokens {options.max_tokens}"]
    return " ".join(parts + (["--recover"] if options.recover else []))
