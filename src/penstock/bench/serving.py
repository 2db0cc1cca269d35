"""The serving benchmark's load and its figures, as vLLM's `benchmark_serving` measures them.

Requests arrive as a Poisson process at a set rate (exponential gaps, seeded) for a set time, each a
streamed chat completion with a prompt and output length drawn from a seeded ShareGPT-like mix
(log-normal lengths: many short, a long tail) or read from a JSONL file. The client times each one:
time to first token (TTFT), time per output token after the first (TPOT), the gaps between streamed
tokens (ITL), end to end (E2E), and, for a refusal, how long the refusal took. Goodput is the requests
per second that met every objective of the SLO (`ttft_ms`, `tpot_ms`, `e2e_ms`), over the arrival window.

Arrivals stop at the window's end; requests still running `drain_s` later are abandoned (the connection
closed, so the server stops them) and counted as missed: that is longer than any request that met the
SLO could have taken.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from penstock.bench.workload import text_tokens
from penstock.engine.tokenizer import Tokenizer
from penstock.router.http_client import ConnectError, Disconnected, HttpClient, Response

# ShareGPT's conversations, scaled to what a small model on a CPU answers in seconds: the medians and
# spreads of log-normal prompt and output lengths, and their bounds.
PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_BOUNDS = 64, 0.8, (8, 512)
OUTPUT_MEDIAN, OUTPUT_SIGMA, OUTPUT_BOUNDS = 32, 0.6, (4, 128)


@dataclass(frozen=True, slots=True)
class ServeRequest:
    prompt: str
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, text: str) -> Slo:
        """`ttft_ms=2000,tpot_ms=200`: any of ttft_ms, tpot_ms, e2e_ms."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name not in ("ttft_ms", "tpot_ms", "e2e_ms") or not value:
                raise ValueError(f"{part!r}: give ttft_ms=…, tpot_ms=… or e2e_ms=…")
            values[name] = float(value)
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.as_dict().items())

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("ttft_ms", self.ttft_ms), ("tpot_ms", self.tpot_ms), ("e2e_ms", self.e2e_ms)) if v}

    def met(self, outcome: Outcome) -> bool:
        if not outcome.ok:
            return False
        checks = ((self.ttft_ms, outcome.ttft_s), (self.tpot_ms, outcome.tpot_s), (self.e2e_ms, outcome.e2e_s))
        return all(limit is None or (value is not None and value * 1000 <= limit) for limit, value in checks)

    def longest_s(self, output_tokens: int) -> float:
        """The longest a request that meets this SLO can take."""
        if self.e2e_ms is not None:
            return self.e2e_ms / 1000
        return ((self.ttft_ms or 10_000) + (self.tpot_ms or 1000) * output_tokens) / 1000


@dataclass(slots=True)
class Outcome:
    status: int = 0  # 0: no answer (the connection failed, or the request was abandoned)
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    retry_after: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.ttft_s is not None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.e2e_s is None or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # the API's base, …/v1
    api_key: str | None
    model: str


def sharegpt_like(tokenizer: Tokenizer, count: int, seed: int) -> list[ServeRequest]:
    """`count` requests of real text (the standard library's source), log-normal lengths, seeded."""
    rng = random.Random(seed)
    pool = text_tokens(tokenizer, 200_000)
    requests = []
    for _ in range(count):
        prompt_len = _lognormal(rng, PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_BOUNDS)
        start = rng.randrange(len(pool) - prompt_len)
        text = tokenizer.decode(pool[start : start + prompt_len])
        output = _lognormal(rng, OUTPUT_MEDIAN, OUTPUT_SIGMA, OUTPUT_BOUNDS)
        requests.append(ServeRequest(text, prompt_len, output))
    return requests


def from_jsonl(path: Path) -> list[ServeRequest]:
    """One request a line: {"prompt": "...", "output_tokens": N} (prompt_tokens optional, for the record)."""
    requests = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, output = str(row["prompt"]), int(row["output_tokens"])
            requests.append(ServeRequest(prompt, int(row.get("prompt_tokens", 0)), output))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    if not requests:
        raise ValueError(f"{path} holds no requests")
    return requests


def _lognormal(rng: random.Random, median: int, sigma: float, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], round(rng.lognormvariate(math.log(median), sigma))))


@dataclass(frozen=True, slots=True)
class Run:
    rate: float
    duration_s: float
    outcomes: tuple[Outcome, ...]

    def summary(self, slo: Slo) -> dict[str, float | int]:
        done = [o for o in self.outcomes if o.ok]
        refused = [o for o in self.outcomes if o.status == 429]
        good = sum(slo.met(o) for o in self.outcomes)
        figures: dict[str, float | int] = {
            "rate": self.rate,
            "requests": len(self.outcomes),
            "completed": len(done),
            "refused": len(refused),
            "refused_with_retry_after": sum(o.retry_after is not None for o in refused),
            **{f"refused_{r}": sum(o.error == r for o in refused) for r in sorted({o.error for o in refused})},
            "failed": len(self.outcomes) - len(done) - len(refused),
            "good": good,
            "goodput_rps": good / self.duration_s,
            "throughput_rps": len(done) / self.duration_s,
            "output_tokens_per_s": sum(o.output_tokens for o in done) / self.duration_s,
        }
        measures = {
            "ttft_ms": [o.ttft_s for o in done],
            "tpot_ms": [o.tpot_s for o in done],
            "itl_ms": [gap for o in done for gap in o.itl_s],
            "e2e_ms": [o.e2e_s for o in done],
            "refusal_ms": [o.e2e_s for o in refused],
        }
        for name, values in measures.items():
            in_ms = [v * 1000 for v in values if v is not None]
            for q in (50, 95, 99):
                figures[f"{name.removesuffix('_ms')}_p{q}_ms"] = percentile(in_ms, q)
        return figures


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


async def drive(
    target: Target, requests: Sequence[ServeRequest], rate: float, duration_s: float, drain_s: float, seed: int
) -> Run:
    """Poisson arrivals at `rate` for `duration_s`, cycling through `requests`; each streamed and timed."""
    rng = random.Random(seed)
    client = HttpClient(keepalive_s=60.0, max_idle_per_origin=4096)
    headers = {"Content-Type": "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    loop = asyncio.get_running_loop()
    began = loop.time()
    tasks: list[asyncio.Task[Outcome]] = []
    arrival = began
    try:
        for index in range(1 << 30):
            arrival += rng.expovariate(rate)
            if arrival - began >= duration_s:
                break
            await asyncio.sleep(max(0.0, arrival - loop.time()))
            request = requests[index % len(requests)]
            tasks.append(asyncio.create_task(_one(client, target, headers, request)))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, began + duration_s + drain_s - loop.time()))
            for task in pending:  # abandoned: the connection closes, the server stops the request
                task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        client.close()
    return Run(rate, duration_s, tuple(o if isinstance(o, Outcome) else Outcome(error="abandoned") for o in outcomes))


async def _one(client: HttpClient, target: Target, headers: dict[str, str], request: ServeRequest) -> Outcome:
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": request.prompt}],
        "max_tokens": request.output_tokens,
        "ignore_eos": True,  # the drawn length, as vLLM's benchmark asks (an extension vLLM and Penstock take)
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    outcome = Outcome()
    sent = time.perf_counter()
    try:
        response = await client.request("POST", target.url + "/chat/completions", orjson.dumps(body), headers)
        outcome.status = response.status
        try:
            if response.status != 200:
                body = await response.read(65536)
                outcome.e2e_s = time.perf_counter() - sent
                outcome.retry_after = response.header("retry-after")
                outcome.error = refusal_reason(body)
                return outcome
            await _read_stream(response, outcome, sent)
        finally:
            response.release()
    except (ConnectError, Disconnected, OSError) as exc:
        outcome.error = type(exc).__name__
    return outcome


# How Penstock's queue words each kind of refusal (router/deployment_queue.py), for the summary's counts.
REFUSALS = {"queue holds": "full", "estimated wait": "wait", "took its place": "shed", "waited the": "timeout"}


def refusal_reason(body: bytes) -> str:
    try:
        message = str(orjson.loads(body)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "unreadable"
    return next((reason for words, reason in REFUSALS.items() if words in message), "other")


async def _read_stream(response: Response, outcome: Outcome, sent: float) -> None:
    last = sent
    while line := await response.readline():
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = orjson.loads(line[6:])
        if "error" in chunk:
            outcome.error = str(chunk["error"].get("code") or "error")
            continue
        if chunk.get("usage"):
            outcome.output_tokens = chunk["usage"].get("completion_tokens", outcome.output_tokens)
        if not any(c.get("delta", {}).get("content") for c in chunk.get("choices", ())):
            continue
        now = time.perf_counter()
        if outcome.ttft_s is None:
            outcome.ttft_s = now - sent
        else:
            outcome.itl_s.append(now - last)
        last = now
    outcome.e2e_s = last - sent
