"""`penstock bench serve`: goodput under load, vLLM's serving-benchmark method (bench/serving.py drives
and times the requests).

Against a running server (`--url`), one run at `--rate`, or the capacity search and the multiples. Without
one, the bench starts its own `penstock serve` (embedded Postgres, the built-in engine; or a `penstock
worker` behind it, a remote deployment), twice: with the deployment's admission queue on and with it off,
each driven at the same multiples of the capacity found with it on. The queue is set from the SLO as an
operator with those objectives would set it: its max wait half the TTFT objective (the rest is the
prefill's), its TPOT target half the TPOT objective (a target is met on average, an objective by each).

The capacity is the highest rate at which at least 95% of the requests sent meet the SLO (counted against
those sent, not the nominal rate: a short Poisson run sends more or fewer): rates double from `start_rate`
until one falls short, then the gap is halved a few times. The gateway's resident memory is read before and after
the heaviest run (a burst past capacity must not leave it holding what it refused).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from penstock.bench.gateway_server import ADMIN_KEY
from penstock.bench.serving import Run, ServeRequest, Slo, Target, drive
from penstock.bench.workers import WorkerProcess, running_gateway, running_workers
from penstock.config import DEFAULT_MODEL_NAME

CAPACITY_SHARE = 0.95  # goodput at capacity, as a share of the offered rate
REFINE_STEPS = 3  # halvings of the gap between the last rate that held and the first that did not
WARMUP_REQUESTS = 8
UNBOUNDED = 100_000

Report = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ServeBenchOptions:
    slo: Slo
    requests: Sequence[ServeRequest]
    duration_s: float = 30.0
    seed: int = 0
    rate: float | None = None  # one run at this rate, no search
    start_rate: float = 0.5
    multiples: tuple[float, ...] = (0.5, 1.0, 3.0, 10.0)
    backends: tuple[str, ...] = ("engine", "worker")  # without a URL
    compare: bool = True  # also with admission off (without a URL)
    url: str | None = None
    api_key: str | None = None
    model: str = DEFAULT_MODEL_NAME
    drain_s: float | None = None  # None: the longest a request meeting the SLO can take, plus 5 s

    def drain(self) -> float:
        if self.drain_s is not None:
            return self.drain_s
        return self.slo.longest_s(max(r.output_tokens for r in self.requests)) + 5.0


@dataclass(slots=True)
class Sweep:
    """One server driven at the multiples of a capacity."""

    capacity_rps: float
    runs: dict[str, dict[str, float | int]] = field(default_factory=dict)  # by multiple: "1x", "3x"
    search: list[dict[str, float | int]] = field(default_factory=list)
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        goodput = {m: r["goodput_rps"] for m, r in self.runs.items()}
        refusals = [r["refusal_p99_ms"] for r in self.runs.values() if r["refused"]]
        figures: dict[str, Any] = {"capacity_rps": self.capacity_rps, "goodput_rps": goodput}
        base = goodput.get("1x")
        for multiple in ("3x", "10x"):
            if base and multiple in goodput:
                figures[f"goodput_ratio_{multiple}"] = goodput[multiple] / base
        figures["refusal_p99_ms"] = max(refusals) if refusals else None
        if self.rss_before_mb is not None and self.rss_after_mb is not None:
            figures |= {"rss_before_mb": self.rss_before_mb, "rss_after_mb": self.rss_after_mb}
            figures["rss_growth"] = self.rss_after_mb / self.rss_before_mb - 1
        return figures | {"runs": self.runs, "capacity_search": self.search}


def run_serve_bench(options: ServeBenchOptions, report: Report) -> dict[str, Any]:
    result: dict[str, Any] = {"slo": options.slo.as_dict(), "duration_s": options.duration_s, "seed": options.seed}
    if options.url is not None:
        target = Target(options.url.rstrip("/"), options.api_key, options.model)
        return result | {"url": options.url, "model": options.model, **_against(target, options, report, None)}
    for backend in options.backends:
        result[backend] = _embedded(backend, options, report)
    return result


def _embedded(backend: str, options: ServeBenchOptions, report: Report) -> dict[str, Any]:
    """The backend served twice, admission on then off, at the multiples of the capacity found with it on."""
    figures: dict[str, Any] = {}
    capacity = options.rate
    for admission in (True, False) if options.compare else (True,):
        label = f"{backend}, admission {'on' if admission else 'off'}"
        with _served(backend, admission, options.slo) as (target, pid):
            report(f"{label}: warming up")
            _warm(target, options)
            sweep = _sweep(target, options, report, pid, capacity, label)
        capacity = sweep.capacity_rps
        figures["admission_on" if admission else "admission_off"] = sweep.as_dict()
    return figures


def _against(target: Target, options: ServeBenchOptions, report: Report, pid: int | None) -> dict[str, Any]:
    _warm(target, options)
    if options.rate is not None and not options.multiples:
        run = _run(target, options, options.rate)
        return {"runs": {f"{options.rate:g}rps": run.summary(options.slo)}}
    return _sweep(target, options, report, pid, options.rate, "server").as_dict()


def _sweep(
    target: Target, options: ServeBenchOptions, report: Report, pid: int | None, capacity: float | None, label: str
) -> Sweep:
    search: list[dict[str, float | int]] = []
    if capacity is None:
        capacity = _capacity(target, options, lambda s: (search.append(s), report(f"{label}: {_line(s)}")))
    sweep = Sweep(capacity, search=search)
    for multiple in options.multiples:
        heaviest = multiple == max(options.multiples)
        if heaviest and pid is not None:
            sweep.rss_before_mb = _rss_mb(pid)
        summary = _run(target, options, capacity * multiple).summary(options.slo)
        sweep.runs[f"{multiple:g}x"] = summary
        report(f"{label}, {multiple:g}x capacity: {_line(summary)}")
        if heaviest and pid is not None:
            sweep.rss_after_mb = _rss_mb(pid)
    return sweep


def _capacity(target: Target, options: ServeBenchOptions, seen: Callable[[dict[str, float | int]], None]) -> float:
    """The highest rate at which CAPACITY_SHARE of the requests meet the SLO: doubling, then halving the gap."""
    held, failed, rate = 0.0, None, options.start_rate
    while failed is None:
        summary = _run(target, options, rate).summary(options.slo)
        seen(summary)
        if _held(summary):
            held, rate = rate, rate * 2
        else:
            failed = rate
    for _ in range(REFINE_STEPS):
        rate = (held + failed) / 2
        summary = _run(target, options, rate).summary(options.slo)
        seen(summary)
        if _held(summary):
            held = rate
        else:
            failed = rate
    return held or rate


def _held(summary: dict[str, float | int]) -> bool:
    return summary["good"] >= CAPACITY_SHARE * summary["requests"]


def _run(target: Target, options: ServeBenchOptions, rate: float) -> Run:
    return _asyncio_run(drive(target, options.requests, rate, options.duration_s, options.drain(), options.seed))


def _warm(target: Target, options: ServeBenchOptions) -> None:
    """A few requests one after another: kernels timed and caches filled before anything is measured."""
    warm = [options.requests[i % len(options.requests)] for i in range(WARMUP_REQUESTS)]
    _asyncio_run(drive(target, warm, 2.0, WARMUP_REQUESTS / 2.0, options.drain(), options.seed))


def _asyncio_run(coroutine: Any) -> Any:
    import uvloop  # the load generator's loop: a third of asyncio's CPU per request

    return uvloop.run(coroutine)


@contextmanager
def _served(backend: str, admission: bool, slo: Slo) -> Iterator[tuple[Target, int]]:
    """`penstock serve` in its own home, serving the model itself (engine) or through a worker (worker)."""
    queue: dict[str, Any] = {"enabled": admission}
    if slo.ttft_ms is not None:
        queue["max_wait_s"] = slo.ttft_ms / 2000
    if slo.tpot_ms is not None:
        queue["target_tpot_ms"] = slo.tpot_ms / 2
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="penstock-bench-serve-")))
        if backend == "engine":
            deployment: dict[str, Any] = {"name": DEFAULT_MODEL_NAME, "queue": queue}
        else:  # the worker's own queue off: admission is the gateway's, on or off
            workers = stack.enter_context(running_workers(1, {"deployments": [_unqueued()]}))
            deployment = _remote(workers, queue)
        gateway = stack.enter_context(running_gateway(home, {"deployments": [deployment]}, ADMIN_KEY))
        yield Target(gateway.base + "/v1", ADMIN_KEY, DEFAULT_MODEL_NAME), gateway.pid


def _unqueued() -> dict[str, Any]:
    return {"name": DEFAULT_MODEL_NAME, "queue": {"enabled": False}}


def _remote(workers: list[WorkerProcess], queue: dict[str, Any]) -> dict[str, Any]:
    upstream: dict[str, Any] = {"urls": [w.url for w in workers], "model": DEFAULT_MODEL_NAME}
    if not queue["enabled"]:  # no bound at all: a replica's max_concurrency would be admission control too
        upstream["max_concurrency"] = UNBOUNDED
    return {"name": DEFAULT_MODEL_NAME, "backend": "openai", "upstream": upstream, "queue": queue}


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def _line(summary: dict[str, float | int]) -> str:
    return (
        f"{summary['rate']:.2f} req/s offered: goodput {summary['goodput_rps']:.2f}, {summary['completed']} done,"
        f" {summary['refused']} refused, {summary['failed']} failed; TTFT p50 {summary['ttft_p50_ms']:.0f} ms,"
        f" TPOT p50 {summary['tpot_p50_ms']:.0f} ms"
    )
