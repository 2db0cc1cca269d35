"""`penstock bench gateway`: what the gateway adds to a request, against an instant model.

The gateway runs in a child process (bench.gateway_server: the real app, its embedded Postgres, the
ledger, rate limits); this process drives it with a small HTTP/1.1 client on raw asyncio streams
with keep-alive connections, so the load generator is not the bottleneck. Latency is timed by the
client from the moment a request is issued until its last byte arrived, so the wait for a free
connection, the loopback, the accept and any queueing in the gateway's event loop all count; the
schedule is open loop (requests are issued at the fixed rate whatever came back), so a stalled
gateway shows up as latency instead of fewer requests. With an instant model, all of it is overhead.

Two runs: a fixed offered rate (default 200 requests/s) for the latency percentiles, then as many
closed-loop connections as it takes to find the highest sustained rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from penstock.bench.gateway_server import ADMIN_KEY, MODEL

# The peer as the issue measured it on this machine class (LiteLLM proxy, master key, instant upstream).
# It is not installed here, so it is quoted, not re-measured, and the JSON says so.
PEER = {"name": "LiteLLM proxy (quoted)", "max_rps": 80.0, "overhead_p50_ms": 18.0}
# With an OpenAI-compatible upstream over HTTP, as the router issue measured LiteLLM 1.106 here (one core
# each, instant upstream).
UPSTREAM_PEER = {"name": "LiteLLM proxy 1.106 (quoted)", "max_rps": 150.0, "overhead_p50_ms": 9.0}
ENV_URLS = ("DATABASE_URL", "REDIS_URL")
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 1}


@dataclass(frozen=True, slots=True)
class GatewayBenchOptions:
    rate: float = 200.0  # offered requests/s for the latency run
    duration_s: float = 10.0
    connections: int = 64  # the closed-loop run's connections
    redis_url: str | None = None
    # Closed-loop rounds against both gateways at once (the connections split between them), each
    # round a pair, this many for each order the two are started in: the cost is the mean over the
    # two orders of the median of each pair's.
    observability_rounds: int = 6
    observability_round_s: float = 2.0
    # none: the instant model in the gateway's process; openai: an instant OpenAI-compatible server over
    # HTTP (bench/instant_upstream.py) behind a remote deployment, the added latency net of a direct call.
    upstream: str = "none"


@dataclass(frozen=True, slots=True)
class GatewayBenchResult:
    overhead_p50_ms: float
    overhead_p90_ms: float
    overhead_p99_ms: float
    offered_rps: float
    achieved_rps: float
    max_rps: float
    max_rps_p50_ms: float
    errors: int
    requests: int
    limiter: str
    load_avg_1m: float
    peer: dict[str, Any]
    ratio_max_rps_vs_peer: float
    ratio_p50_vs_peer: float  # peer p50 ÷ ours: how many times less latency we add
    load_generator: str
    command: str
    # Closed-loop max rate with and without request observability (metrics, logs, review samples; traces
    # are off by default), from rounds that load two gateways at once, sharing one CPU: the rates are
    # medians over rounds (each gateway's, with half the CPU); the costs, each round's, are medians over
    # the rounds of each start order, averaged over the two orders.
    max_rps_observed: float = 0.0
    max_rps_unobserved: float = 0.0
    observability_cost_pct: float = 0.0
    # The same rounds read as each gateway process's CPU time per request (from /proc): steadier than
    # the rates on a shared machine, and what limits a gateway whose event loop is busy.
    cpu_us_per_request_observed: float = 0.0
    cpu_us_per_request_unobserved: float = 0.0
    observability_cpu_cost_pct: float = 0.0
    upstream: str = "none"
    upstream_p50_ms: float = 0.0  # a direct call to the upstream, subtracted from the overhead figures

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_gateway_bench(options: GatewayBenchOptions) -> GatewayBenchResult:
    if options.upstream == "openai":
        return run_upstream_bench(options)
    gateway_cpus, client_cpus = _split_cpus()
    # Of two gateways with the same code, loaded at once, the one started first ran about 1.2% slower
    # (ten runs of ten rounds, every one, whichever the load generator served first): the pair is
    # started in both orders, and the two orders' costs averaged.
    with _pinned(client_cpus):
        with _pair(options.redis_url, gateway_cpus, observed_first=False) as (main, bare):
            bare_first = _observability_rounds(options, main, bare)
        with _pair(options.redis_url, gateway_cpus, observed_first=True) as (main, bare):
            # First, while both have served the same: a gateway that has served some 25,000 more requests
            # runs about 5% slower (the same code on both sides, loaded at once), which would count as cost.
            observed_first = _observability_rounds(options, main, bare)
            latency = asyncio.run(_open_loop(main.port, main.request, options.rate, options.duration_s))
            closed = asyncio.run(_closed_loop(main.port, main.request, options.connections, options.duration_s))
    pairs = bare_first + observed_first
    observed, unobserved = (
        Round(statistics.median(p[i].rps for p in pairs), statistics.median(p[i].cpu_us for p in pairs)) for i in (0, 1)
    )
    cost = cost_over_orders([bare_first, observed_first])
    p50, p90, p99 = _percentiles(latency.latencies_s)
    max_p50 = _percentiles(closed.latencies_s)[0]
    return GatewayBenchResult(
        overhead_p50_ms=p50,
        overhead_p90_ms=p90,
        overhead_p99_ms=p99,
        offered_rps=options.rate,
        achieved_rps=len(latency.latencies_s) / latency.wall_s,
        max_rps=len(closed.latencies_s) / closed.wall_s,
        max_rps_p50_ms=max_p50,
        errors=latency.errors + closed.errors,
        requests=len(latency.latencies_s) + len(closed.latencies_s),
        limiter="redis" if options.redis_url else "in process",
        load_avg_1m=os.getloadavg()[0],
        peer=PEER,
        ratio_max_rps_vs_peer=(len(closed.latencies_s) / closed.wall_s) / PEER["max_rps"],
        ratio_p50_vs_peer=PEER["overhead_p50_ms"] / p50 if p50 else float("inf"),
        load_generator=_load_generator(gateway_cpus, client_cpus),
        command=_command(options),
        max_rps_observed=round(observed.rps, 1),
        max_rps_unobserved=round(unobserved.rps, 1),
        observability_cost_pct=round(cost.rps_pct, 2),
        cpu_us_per_request_observed=round(observed.cpu_us, 1),
        cpu_us_per_request_unobserved=round(unobserved.cpu_us, 1),
        observability_cpu_cost_pct=round(cost.cpu_pct, 2),
    )


def run_upstream_bench(options: GatewayBenchOptions) -> GatewayBenchResult:
    """The gateway on one core in front of the instant upstream (on the load generator's): the rate's
    latency less a direct call's, and the closed-loop maximum."""
    gateway_cpus, client_cpus = _split_cpus()
    with _pinned(client_cpus), _instant_upstream() as upstream_port:
        direct_request = _request_bytes(upstream_port, "none")
        direct = asyncio.run(_open_loop(upstream_port, direct_request, options.rate, options.duration_s))
        url = f"http://127.0.0.1:{upstream_port}/v1"
        with _gateway(options.redis_url, cpus=gateway_cpus, upstream_url=url) as main:
            latency = asyncio.run(_open_loop(main.port, main.request, options.rate, options.duration_s))
            closed = asyncio.run(_closed_loop(main.port, main.request, options.connections, options.duration_s))
    base = _percentiles(direct.latencies_s)[0]
    p50, p90, p99 = (max(0.0, v - base) for v in _percentiles(latency.latencies_s))
    max_rps = len(closed.latencies_s) / closed.wall_s
    return GatewayBenchResult(
        overhead_p50_ms=p50,
        overhead_p90_ms=p90,
        overhead_p99_ms=p99,
        offered_rps=options.rate,
        achieved_rps=len(latency.latencies_s) / latency.wall_s,
        max_rps=max_rps,
        max_rps_p50_ms=_percentiles(closed.latencies_s)[0],
        errors=latency.errors + closed.errors + direct.errors,
        requests=len(latency.latencies_s) + len(closed.latencies_s),
        limiter="redis" if options.redis_url else "in process",
        load_avg_1m=os.getloadavg()[0],
        peer=UPSTREAM_PEER,
        ratio_max_rps_vs_peer=max_rps / UPSTREAM_PEER["max_rps"],
        ratio_p50_vs_peer=UPSTREAM_PEER["overhead_p50_ms"] / p50 if p50 else float("inf"),
        load_generator=_load_generator(gateway_cpus, client_cpus) + "; the instant upstream beside it",
        command=_command(options),
        upstream="openai",
        upstream_p50_ms=round(base, 3),
    )


@contextmanager
def _instant_upstream() -> Iterator[int]:
    port = free_port()
    command = [sys.executable, "-m", "penstock.bench.instant_upstream", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the instant upstream did not start")
            time.sleep(0.1)
        yield port
    finally:
        server.kill()
        server.wait()


@dataclass(frozen=True, slots=True)
class _Gateway:
    port: int
    request: bytes  # a chat completion, authorized by the bench tenant's key
    pid: int


@dataclass(frozen=True, slots=True)
class Round:
    rps: float  # closed-loop requests/s
    cpu_us: float  # gateway CPU microseconds per request (0 where /proc cannot tell)


@dataclass(frozen=True, slots=True)
class Cost:
    rps_pct: float  # the throughput lost to observability
    cpu_pct: float  # the CPU per request it adds


def _observability_rounds(
    options: GatewayBenchOptions, observed: _Gateway, bare: _Gateway
) -> list[tuple[Round, Round]]:
    """Both gateways loaded at once, half the connections each, round after round: each round is a pair.

    They share one CPU, which the scheduler splits evenly between two busy processes, so each
    gateway's requests per round say what a request costs it, under the same load and the same
    moment of a shared machine's noise. Gateways loaded one after the other did not compare: with
    the same code on both sides, the cost measured that way ran from -6% to +14% (pairs of rounds
    in alternating order, a 2-core Zen 4); at once, it stays within about 1%.
    """
    connections = max(1, options.connections // 2)
    _round_at_once(observed, bare, connections, options.observability_round_s)  # a warm-up, not counted
    return [
        _round_at_once(observed, bare, connections, options.observability_round_s)
        for _ in range(options.observability_rounds)
    ]


def cost_over_orders(orders: list[list[tuple[Round, Round]]]) -> Cost:
    """The mean over start orders of each order's cost (its pairs' median), so what favours one order cancels."""
    costs = [paired_cost(pairs) for pairs in orders]
    return Cost(statistics.fmean(c.rps_pct for c in costs), statistics.fmean(c.cpu_pct for c in costs))


def paired_cost(pairs: list[tuple[Round, Round]]) -> Cost:
    """Observability's cost as the median over (observed, bare) pairs of what it cost within the pair."""
    rps_pct = statistics.median((1 - o.rps / b.rps) * 100 if b.rps else 0.0 for o, b in pairs)
    cpu_pct = statistics.median((o.cpu_us / b.cpu_us - 1) * 100 if b.cpu_us else 0.0 for o, b in pairs)
    return Cost(rps_pct, cpu_pct)


def _round_at_once(observed: _Gateway, bare: _Gateway, connections: int, duration_s: float) -> tuple[Round, Round]:
    gateways = (observed, bare)
    before = [_cpu_seconds(g.pid) for g in gateways]

    async def both() -> list[_Run]:
        return await asyncio.gather(*(_closed_loop(g.port, g.request, connections, duration_s) for g in gateways))

    runs = asyncio.run(both())
    rounds = []
    for gateway, run, cpu_s in zip(gateways, runs, before, strict=True):
        served = len(run.latencies_s)
        cpu_us = (_cpu_seconds(gateway.pid) - cpu_s) / served * 1e6 if served else 0.0
        rounds.append(Round(served / run.wall_s, cpu_us))
    return rounds[0], rounds[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far; 0 where /proc does not exist (not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class _Run:
    latencies_s: list[float]
    errors: int
    wall_s: float


async def _open_loop(port: int, request: bytes, rate: float, duration_s: float) -> _Run:
    """Requests issued every 1/rate s whatever came back, each on a free connection (open loop)."""
    connections: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(max(8, int(rate // 10))):
        connections.put_nowait(await _Connection.open(port))
    run = _Run([], 0, 0.0)
    start, total = time.perf_counter(), int(rate * duration_s)

    async def one() -> None:
        # From when the request is issued, before waiting for a free connection (that wait counts);
        # the scheduler's own oversleep does not, since it is the client's, not the gateway's.
        issued = time.perf_counter()
        conn = await connections.get()
        try:
            ok = await conn.exchange(request)
            run.latencies_s.append(time.perf_counter() - issued) if ok else None
            run.errors += not ok
        finally:
            connections.put_nowait(conn)

    tasks = []
    for i in range(total):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    run.wall_s = time.perf_counter() - start
    while not connections.empty():
        connections.get_nowait().close()
    return run


async def _closed_loop(port: int, request: bytes, connections: int, duration_s: float) -> _Run:
    """Each connection sends its next request the moment the last one is answered."""
    run = _Run([], 0, 0.0)
    start = time.perf_counter()
    stop = start + duration_s

    async def loop() -> None:
        conn = await _Connection.open(port)
        try:
            while (sent := time.perf_counter()) < stop:
                ok = await conn.exchange(request)
                run.latencies_s.append(time.perf_counter() - sent) if ok else None
                run.errors += not ok
        finally:
            conn.close()

    await asyncio.gather(*(loop() for _ in range(connections)))
    run.wall_s = time.perf_counter() - start
    return run


class _Connection:
    """One keep-alive HTTP/1.1 connection: write a request, read one Content-Length response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def exchange(self, request: bytes) -> bool:
        """Send and read the whole answer; True for a 200."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        await self._reader.readexactly(length)
        return status == 200

    def close(self) -> None:
        self._writer.close()


def _request_bytes(port: int, key: str) -> bytes:
    body = json.dumps(BODY).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _load_generator(gateway_cpus: set[int] | None, client_cpus: set[int] | None) -> str:
    text = "penstock's asyncio HTTP/1.1 client, keep-alive, in a separate process from the gateway"
    if gateway_cpus and client_cpus:
        text += f", on CPUs {sorted(client_cpus)}; both gateways on CPU {min(gateway_cpus)}"
    return text


def _split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(the gateways' CPU, the load generator's CPUs), or (None, None) where they cannot be split.

    Both gateways (and their embedded databases) share one CPU and the load generator keeps the
    rest: the two gateways then run on the same core, which the comparison between them needs (on
    a shared machine one core can run slower than the other for minutes), and the load generator
    never takes a gateway's time.
    """
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


@contextmanager
def _pinned(cpus: set[int] | None) -> Iterator[None]:
    """This process on `cpus` for the duration, then back where it was."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def _pair(redis_url: str | None, cpus: set[int] | None, *, observed_first: bool) -> Iterator[tuple[_Gateway, _Gateway]]:
    """The observed gateway and the bare one, started in the order given."""
    with ExitStack() as stack:
        started = {
            observed: stack.enter_context(_gateway(redis_url, observed=observed, cpus=cpus))
            for observed in (observed_first, not observed_first)
        }
        yield started[True], started[False]


@contextmanager
def _gateway(
    redis_url: str | None, *, observed: bool = True, cpus: set[int] | None = None, upstream_url: str | None = None
) -> Iterator[_Gateway]:
    """The gateway server in a child process, and a tenant key with limits far above the load."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="penstock-bench-") as home:
        command = [sys.executable, "-m", "penstock.bench.gateway_server", "--port", str(port), "--home", home]
        command += ["--redis-url", redis_url] if redis_url else []
        command += [] if observed else ["--no-observability"]
        command += ["--upstream-url", upstream_url] if upstream_url else []
        # Its own embedded Postgres and no inherited settings: the environment would override the flags.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PENSTOCK_") and k not in ENV_URLS}
        with (Path(home) / "gateway.log").open("wb") as log:
            pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # before any thread or child starts
            server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, server, Path(home) / "gateway.log")
            yield _Gateway(port, _request_bytes(port, _bench_key(base)), server.pid)
        finally:
            interrupt(server)


def interrupt(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """Ctrl-C, as a user stops a server; killed if it has not exited within `grace_s`."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_ready(base: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    """Return once the server at `base` says ready; raise with its log's tail if it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the gateway exited early:\n{log.read_text()[-4000:]}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"the gateway was not ready within {timeout_s}s:\n{log.read_text()[-4000:]}")


def _bench_key(base: str) -> str:
    """A tenant key with rate limits on (so the limiter does its work) but far above what the run offers."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    limits = {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_concurrent": 100_000}
    httpx.post(f"{base}/admin/tenants", json={"id": "bench", "limits": limits}, headers=admin).raise_for_status()
    created = httpx.post(f"{base}/admin/keys", json={"tenant": "bench", **limits}, headers=admin)
    created.raise_for_status()
    return str(created.json()["key"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentiles(latencies_s: list[float]) -> tuple[float, float, float]:
    if len(latencies_s) < 2:
        return (float("nan"),) * 3
    cuts = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[89] * 1000, cuts[98] * 1000


def _command(options: GatewayBenchOptions) -> str:
    args = ["penstock", "bench", "gateway", "--json", "--rate", str(options.rate)]
    args += ["--duration", str(options.duration_s), "--connections", str(options.connections)]
    args += ["--upstream", options.upstream] if options.upstream != "none" else []
    return " ".join(args + (["--redis-url", "<url>"] if options.redis_url else []))
