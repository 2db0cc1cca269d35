"""`penstock bench affinity`: what prefix affinity does for the workers' prefix caches.

Two `penstock worker` processes, each with a KV cache that holds about half the workload's documents,
behind `penstock serve` with two deployments over the same pair: `affine` (prefix affinity on) and
`spread` (least outstanding only, which for one request at a time is round-robin). Each mode gets its
own set of documents, asked about in the same seeded order: every request quotes one document as its
system prompt and asks a short question. The prefix-cache hit rate is read from the workers' own
metrics (hit tokens / prompt tokens looked up) over each mode's requests.
"""

from __future__ import annotations

import asyncio
import random
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from penstock.bench.workers import WorkerProcess, running_gateway, running_workers
from penstock.config import DEFAULT_MODEL_NAME

ADMIN_KEY = "sk-bench-affinity-0123456789"
WORDS = [
    "river",
    "stone",
    "valve",
    "turbine",
    "flow",
    "pressure",
    "gate",
    "channel",
    "reservoir",
    "spillway",
    "intake",
    "pipe",
    "water",
    "power",
    "station",
    "engineer",
    "maintenance",
    "schedule",
    "inspection",
    "report",
    "level",
    "season",
    "rainfall",
    "storage",
    "release",
    "downstream",
]
QUERIED = re.compile(r"penstock_prefix_cache_queried_tokens_total\{[^}]*\} (\S+)")
HITS = re.compile(r"penstock_prefix_cache_hit_tokens_total\{[^}]*\} (\S+)")


@dataclass(frozen=True, slots=True)
class AffinityOptions:
    documents: int = 12
    document_words: int = 220  # about 300 tokens each
    requests: int = 96
    concurrency: int = 2
    cache_tokens: int = 2048  # each worker's KV cache: about half the documents
    seed: int = 0


@dataclass(frozen=True, slots=True)
class AffinityResult:
    hit_rate_affinity: float
    hit_rate_round_robin: float
    ratio: float
    requests: int
    documents: int
    errors: int
    command: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_affinity_bench(options: AffinityOptions) -> AffinityResult:
    worker_config = {"deployments": [{"name": DEFAULT_MODEL_NAME, "engine": {"kv_cache_tokens": options.cache_tokens}}]}
    with (
        running_workers(2, worker_config) as workers,
        tempfile.TemporaryDirectory(prefix="penstock-affinity-") as home,
        running_gateway(Path(home), gateway_config(workers), ADMIN_KEY) as gateway,
    ):
        return asyncio.run(_run(gateway.base, workers, options))


async def _run(base: str, workers: list[WorkerProcess], options: AffinityOptions) -> AffinityResult:
    rates, errors = {}, 0
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        for at, mode in enumerate(("spread", "affine")):
            documents = _documents(options, seed=options.seed * 2 + at)
            before = await _cache_counts(client, workers)
            errors += await _ask_all(client, mode, documents, options)
            after = await _cache_counts(client, workers)
            queried, hits = after[0] - before[0], after[1] - before[1]
            rates[mode] = hits / queried if queried else 0.0
    return AffinityResult(
        hit_rate_affinity=round(rates["affine"], 4),
        hit_rate_round_robin=round(rates["spread"], 4),
        ratio=round(rates["affine"] / rates["spread"], 2) if rates["spread"] else float("inf"),
        requests=options.requests,
        documents=options.documents,
        errors=errors,
        command=_command(options),
    )


def _documents(options: AffinityOptions, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Document {n}: " + " ".join(rng.choice(WORDS) for _ in range(options.document_words))
        for n in range(options.documents)
    ]


async def _ask_all(client: httpx.AsyncClient, model: str, documents: list[str], options: AffinityOptions) -> int:
    rng = random.Random(options.seed)
    order = [rng.randrange(len(documents)) for _ in range(options.requests)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in order:
        queue.put_nowait(n)
    errors = 0

    async def asker() -> None:
        nonlocal errors
        while not queue.empty():
            n = queue.get_nowait()
            messages = [
                {"role": "system", "content": f"Answer from this document.\n\n{documents[n]}"},
                {"role": "user", "content": f"In one word, what is document {n} about? ({rng.random():.6f})"},
            ]
            body = {"model": model, "messages": messages, "max_tokens": 2, "temperature": 0}
            response = await client.post("/v1/chat/completions", json=body)
            errors += response.status_code != 200

    await asyncio.gather(*(asker() for _ in range(options.concurrency)))
    return errors


async def _cache_counts(client: httpx.AsyncClient, workers: list[WorkerProcess]) -> tuple[float, float]:
    """(prompt tokens looked up, of them found cached), summed over the workers."""
    queried = hits = 0.0
    for worker in workers:
        text = (await client.get(worker.url.removesuffix("/v1") + "/metrics")).text
        queried += sum(float(v) for v in QUERIED.findall(text))
        hits += sum(float(v) for v in HITS.findall(text))
    return queried, hits


def gateway_config(workers: list[WorkerProcess]) -> dict[str, Any]:
    def deployment(name: str, affinity_tokens: int) -> dict[str, Any]:
        upstream = {"urls": [w.url for w in workers], "model": DEFAULT_MODEL_NAME, "affinity_tokens": affinity_tokens}
        return {"name": name, "backend": "openai", "upstream": upstream}

    return {"deployments": [deployment("affine", 256), deployment("spread", 0)]}


def _command(options: AffinityOptions) -> str:
    parts = ["penstock bench affinity", f"--documents {options.documents}", f"--requests {options.requests}"]
    return " ".join([*parts, f"--concurrency {options.concurrency}", f"--cache-tokens {options.cache_tokens}"])
