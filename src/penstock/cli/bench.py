"""`penstock bench`: measure Penstock against a named peer and print the command that reproduces it."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from penstock.cli.options import ConfigOption, PhaseBars, err_console, settings_or_exit
from penstock.config import DEFAULT_MODEL_NAME

if TYPE_CHECKING:
    from penstock.bench.engine import EngineBenchResult
    from penstock.engine.tokenizer import Tokenizer
from penstock.observability.logging import configure_logging

DEFAULT_SLO = "ttft_ms=2000,tpot_ms=250"  # what a person reading a streamed answer on this CPU would accept

app = typer.Typer(help="Benchmarks: Penstock against a peer, on this machine.", no_args_is_help=True)


class Weights(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    int4 = "int4"
    int4_bf16 = "int4-bf16"


class Dtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Determinism(StrEnum):
    batch_invariant = "batch_invariant"
    fast = "fast"


class KVDtype(StrEnum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class AttentionKernel(StrEnum):
    auto = "auto"
    native = "native"
    sdpa = "sdpa"


@app.command("engine")
def engine(
    json_output: bool = typer.Option(False, "--json", help="One JSON object on stdout; progress on stderr."),
    quick: bool = typer.Option(False, "--quick", help="A small workload that runs in under a minute."),
    requests: int | None = typer.Option(
        None, min=1, help="Requests in the throughput run (default 64; 8 with --quick)."
    ),
    seed: int = typer.Option(0, help="Seed of the workload."),
    kv_fraction: float = typer.Option(1.0, min=0.0, help="KV cache as a fraction of what the workload needs."),
    dtype: Dtype = typer.Option(Dtype.float32, help="The engine model's weights and activations."),
    hf_dtype: list[Dtype] = typer.Option(
        [Dtype.float32, Dtype.bfloat16], help="The peer's dtypes (repeat the option); its fastest counts."
    ),
    threads: int | None = typer.Option(None, min=1, help="torch threads (default: torch's own choice)."),
    kv_dtype: KVDtype = typer.Option(KVDtype.auto, help="Engine KV cache dtype; auto: the faster, timed at load."),
    attention: AttentionKernel = typer.Option(
        AttentionKernel.auto, help="Engine attention; auto: the native kernel where it times faster than SDPA."
    ),
    weights: Weights = typer.Option(
        Weights.auto,
        help="Engine weights as a deployment sets them; auto: for a 4-bit GGUF, int4 for few rows and bf16 "
        "for many, each where it times faster; int4-bf16: the same on any checkpoint; fp32: exact.",
    ),
    determinism: Determinism = typer.Option(
        Determinism.batch_invariant,
        help="The mode of the main measurements (both modes' throughput and fp32 answer match are always measured).",
    ),
) -> None:
    """LLMEngine against transformers' generate: throughput, single-stream decode, prefix-cache TTFT."""
    configure_logging("warning")  # stderr, and quiet: stdout holds only the result
    from penstock.bench.engine import BenchOptions, run_engine_bench  # torch: only for the command that needs it

    options = BenchOptions(
        quick,
        requests,
        seed,
        kv_fraction,
        dtype.value,
        threads,
        weights.value,
        kv_dtype.value,
        attention.value,
        determinism.value,
        tuple(dict.fromkeys(d.value for d in hf_dtype)),
    )
    with BarProgress(err_console) as progress:
        result = run_engine_bench(options, progress)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        Console().print(_table(result))
        typer.echo(f"command: {result.command}\npeer:    {result.peer}")


class BarProgress:
    """The benchmark's phases as rich progress bars, one per phase."""

    def __init__(self, console: Console) -> None:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self._bar = RichBar(*columns, console=console, refresh_per_second=2)
        self._task: TaskID | None = None

    def __enter__(self) -> BarProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._complete()
        self._bar.stop()

    def phase(self, name: str, total: int) -> None:
        self._complete()
        self._task = self._bar.add_task(name, total=total)

    def advance(self, amount: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, amount)

    def _complete(self) -> None:
        """Fill the finished phase's bar: eos may have ended it short of its total."""
        if self._task is not None:
            self._bar.update(self._task, completed=self._bar.tasks[self._task].total)


def _table(r: EngineBenchResult) -> Table:
    table = Table(title=f"penstock bench engine: {r.model}, {r.dtype}, {r.torch_threads} torch threads")
    for column in ("measure", "penstock", "transformers", "penstock / transformers"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row(
        f"throughput, {r.requests} requests at once (tok/s)",
        f"{r.engine_tok_s:.1f}",
        f"{r.hf_tok_s:.1f} ({r.hf_dtype}, batch {r.hf_best_batch})",
        f"{r.throughput_ratio:.2f}x",
    )
    table.add_row(
        "single-stream decode (tok/s)",
        f"{r.engine_single_tok_s:.1f}",
        f"{r.hf_single_tok_s:.1f} ({r.hf_single_dtype})",
        f"{r.single_stream_ratio:.2f}x",
    )
    table.add_row(
        "shared-prefix TTFT, cold → warm (s)",
        f"{r.prefix_cold_ttft_s:.3f} → {r.prefix_warm_ttft_s:.3f}",
        "",
        f"{r.prefix_ttft_speedup:.2f}x faster warm",
    )
    table.add_row(
        "preemptions / failed / ended at eos", f"{r.preemptions} / {r.failed_requests} / {r.engine_early_stops}", "", ""
    )
    table.add_row("KV cache (tokens)", f"{r.kv_cache_tokens:,}", "", "")
    table.add_row(
        "against fp32: KL (nats) / top-1, decode | dense paths",
        f"{r.few_row_kl_vs_fp32:.4f} / {r.few_row_top1_vs_fp32:.1%} | "
        f"{r.dense_kl_vs_fp32:.4f} / {r.dense_top1_vs_fp32:.1%}",
        "",
        "",
    )
    tok_s, match = r.engine_tok_s_by_determinism, r.fp32_answer_match
    table.add_row(
        "batch_invariant | fast: throughput (tok/s), cost",
        f"{tok_s['batch_invariant']:.1f} | {tok_s['fast']:.1f}, {r.invariance_cost_pct:.1f}%",
        "",
        "",
    )
    table.add_row(
        f"answers equal to fp32's ({r.answer_prompts} chat prompts)",
        f"{match['batch_invariant']:.0%} | {match['fast']:.0%}",
        "",
        "",
    )
    return table


@app.command("gateway")
def gateway(
    json_output: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    rate: float = typer.Option(200.0, min=1.0, help="Offered requests/s for the latency run."),
    duration: float = typer.Option(10.0, min=1.0, help="Seconds per run."),
    connections: int = typer.Option(64, min=1, help="Connections in the closed-loop (max rps) run."),
    redis_url: str | None = typer.Option(None, help="Rate limits through this Redis (default: in process)."),
    upstream: str = typer.Option(
        "none", help="none: the instant model in process; openai: an instant OpenAI-compatible server over HTTP."
    ),
) -> None:
    """The gateway's added latency (p50/p99 at a fixed rate) and highest sustained requests/s, instant model."""
    from penstock.bench.gateway import GatewayBenchOptions, run_gateway_bench

    if upstream not in ("none", "openai"):
        raise typer.BadParameter("none or openai", param_hint="--upstream")
    err_console.print(f"starting the gateway (embedded Postgres, instant model, upstream {upstream}) and driving it…")
    result = run_gateway_bench(GatewayBenchOptions(rate, duration, connections, redis_url, upstream=upstream))
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
        return
    table = Table(title=f"penstock bench gateway: instant model, limits {result.limiter}")
    for column in ("measure", "penstock", str(result.peer["name"]), "ratio"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row(
        f"added latency at {result.offered_rps:g} req/s, p50 / p99 (ms)",
        f"{result.overhead_p50_ms:.2f} / {result.overhead_p99_ms:.2f}",
        f"{result.peer['overhead_p50_ms']:g} / n/a",
        f"{result.ratio_p50_vs_peer:.1f}x less",
    )
    table.add_row(
        "max sustained (req/s)",
        f"{result.max_rps:.0f}",
        f"{result.peer['max_rps']:g}",
        f"{result.ratio_max_rps_vs_peer:.1f}x",
    )
    table.add_row("errors / requests", f"{result.errors} / {result.requests}", "", "")
    if result.upstream != "none":
        table.add_row("direct call to the upstream, p50 (ms; subtracted)", f"{result.upstream_p50_ms:.2f}", "", "")
        Console().print(table)
        typer.echo(f"command: {result.command}\nload generator: {result.load_generator}")
        return
    table.add_row(
        "max req/s with / without observability",
        f"{result.max_rps_observed:.0f} / {result.max_rps_unobserved:.0f}",
        "",
        f"cost {result.observability_cost_pct:.1f}% (target ≤ 5%)",
    )
    table.add_row(
        "gateway CPU per request with / without observability (µs)",
        f"{result.cpu_us_per_request_observed:.0f} / {result.cpu_us_per_request_unobserved:.0f}",
        "",
        f"cost {result.observability_cpu_cost_pct:.1f}%",
    )
    Console().print(table)
    typer.echo(f"command: {result.command}\nload generator: {result.load_generator}")


@app.command("failover")
def failover(
    json_output: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    concurrency: int = typer.Option(6, min=1, help="Streaming clients, each asking again as soon as answered."),
    duration: float = typer.Option(12.0, min=2.0, help="Seconds of load."),
    kill_at: float = typer.Option(4.0, min=0.5, help="Seconds into the load when one worker is killed."),
    max_tokens: int = typer.Option(24, min=1, help="Tokens per answer."),
    recover: bool = typer.Option(False, help="Then restart the worker and time its breaker closing."),
) -> None:
    """Two `penstock worker`s behind the gateway, one killed under load: ejection time and what clients saw."""
    from penstock.bench.failover import FailoverOptions, run_failover_bench

    err_console.print("starting two workers and a gateway, then loading them and killing one…")
    options = FailoverOptions(concurrency, duration, kill_at, max_tokens, recover=recover)
    result = run_failover_bench(options)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
        return
    table = Table(title="penstock bench failover: 2 workers, one killed under load")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row("ejected after (s)", _maybe(result.ejected_after_s), "≤ 1")
    table.add_row("failed before the first token", str(result.failed_before_first_token), "0")
    table.add_row("streams cut after it (error event + [DONE])", str(result.streams_cut), "")
    table.add_row("hung / ended without [DONE]", f"{result.hung} / {result.broken}", "0 / 0")
    table.add_row("calls per worker before the kill", " / ".join(map(str, result.calls_per_replica)), "")
    table.add_row("requests / ok", f"{result.requests} / {result.ok}", "")
    table.add_row("time to first token p50 (ms)", f"{result.ttft_p50_ms:.0f}", "")
    if recover:
        table.add_row("breaker closed after the worker's restart (s)", _maybe(result.recovered_after_s), "")
    Console().print(table)
    typer.echo(f"command: {result.command}")


@app.command("affinity")
def affinity(
    json_output: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    documents: int = typer.Option(12, min=2, help="Documents quoted as system prompts."),
    requests: int = typer.Option(96, min=4, help="Questions, each about one document, per mode."),
    concurrency: int = typer.Option(2, min=1, help="Questions in flight at once."),
    cache_tokens: int = typer.Option(2048, min=256, help="Each worker's KV cache, in tokens."),
) -> None:
    """Prefix-cache hit rate over two workers: prefix affinity against round-robin, same workload."""
    from penstock.bench.affinity import AffinityOptions, run_affinity_bench

    err_console.print("starting two workers and a gateway, then asking about shared documents both ways…")
    result = run_affinity_bench(
        AffinityOptions(documents, requests=requests, concurrency=concurrency, cache_tokens=cache_tokens)
    )
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
        return
    table = Table(title=f"penstock bench affinity: {result.documents} documents, {result.requests} requests a mode")
    for column in ("measure", "prefix affinity", "round-robin", "ratio"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row(
        "prefix-cache hit rate (workers' own counts)",
        f"{result.hit_rate_affinity:.1%}",
        f"{result.hit_rate_round_robin:.1%}",
        f"{result.ratio:.2f}x",
    )
    table.add_row("errors", str(result.errors), "", "")
    Console().print(table)
    typer.echo(f"command: {result.command}")


def _maybe(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f}"


@app.command("retrieval")
def retrieval(
    json_output: bool = typer.Option(False, "--json", help="One JSON object on stdout; progress on stderr."),
    chunks: int = typer.Option(100_000, min=100, help="Chunks in the bench collection (built once, then kept)."),
    queries: int = typer.Option(200, min=10, help="Queries timed."),
    ingest_documents: int = typer.Option(100, min=1, help="Fresh documents for the ingest-speed run."),
    config: Path | None = ConfigOption,
) -> None:
    """Retrieval stage latency (embed + dense + sparse + fusion) on a large collection, and ingest speed."""
    configure_logging("warning")
    from penstock.bench.retrieval import RetrievalBenchOptions, run  # torch: only for the command that needs it

    settings = settings_or_exit(config)
    options = RetrievalBenchOptions(chunks, queries, ingest_documents)
    with PhaseBars() as bars:
        result = run(options, settings, bars.update)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
        return
    table = Table(title=f"penstock bench retrieval: {result.chunks:,} chunks, {result.queries} queries, no rerank")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("retrieval stage p50 / p95 (ms)", f"{result.p50_ms:.1f} / {result.p95_ms:.1f}")
    table.add_row("target p95 (ms)", f"{result.target_p95_ms:g}")
    table.add_row("sub-stage p50 (ms)", ", ".join(f"{k} {v:.1f}" for k, v in result.stage_p50_ms.items()))
    table.add_row(
        "ingest (chunks/s, documents/s)", f"{result.ingest_chunks_per_s:.1f}, {result.ingest_documents_per_s:.2f}"
    )
    Console().print(table)
    typer.echo(f"command: {result.command}")


@app.command("serve")
def serve(
    json_output: bool = typer.Option(False, "--json", help="One JSON object on stdout; progress on stderr."),
    url: str | None = typer.Option(None, help="A running server's API base (…/v1); default: start one here."),
    api_key: str | None = typer.Option(None, envvar="PENSTOCK_API_KEY", help="Its key (with --url)."),
    model: str = typer.Option(DEFAULT_MODEL_NAME, help="The model to ask for (with --url)."),
    slo: str = typer.Option(DEFAULT_SLO, help="What a good request meets: ttft_ms=…,tpot_ms=…,e2e_ms=…"),
    rate: float | None = typer.Option(None, min=0.01, help="Requests/s: the capacity to multiply, not searched."),
    multiples: str = typer.Option("0.5,1,3,10", help="Rates to run at, as multiples of the capacity."),
    duration: float = typer.Option(30.0, min=2.0, help="Seconds of arrivals per run."),
    seed: int = typer.Option(0, help="Seed of the lengths and the arrivals."),
    dataset: Path | None = typer.Option(None, help='JSONL, one {"prompt": …, "output_tokens": N} a line.'),
    backend: list[str] = typer.Option(["engine", "worker"], help="Without --url: engine, worker (repeat)."),
    compare: bool = typer.Option(True, help="Without --url: also run with admission off."),
) -> None:
    """Goodput under Poisson load (vLLM's serving benchmark): capacity, then 0.5x, 1x, 3x and 10x of it."""
    configure_logging("warning")
    from penstock.bench.serve import ServeBenchOptions, run_serve_bench
    from penstock.bench.serving import Slo, from_jsonl, sharegpt_like

    try:
        objectives, times = Slo.parse(slo), tuple(float(m) for m in multiples.split(",") if m.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if any(b not in ("engine", "worker") for b in backend):
        raise typer.BadParameter("engine or worker", param_hint="--backend")
    requests = from_jsonl(dataset) if dataset is not None else sharegpt_like(_tokenizer(), 512, seed)
    options = ServeBenchOptions(
        objectives,
        requests,
        duration,
        seed,
        rate,
        multiples=times,
        backends=tuple(backend),
        compare=compare,
        url=url,
        api_key=api_key,
        model=model,
    )
    result = run_serve_bench(options, lambda line: err_console.print(line))
    result["command"] = "penstock bench serve " + " ".join(
        _serve_flags(url, model, slo, rate, multiples, duration, seed)
    )
    if json_output:
        typer.echo(json.dumps(result))
        return
    Console().print(_serve_table(result))
    typer.echo(f"command: {result['command']}")


def _tokenizer() -> Tokenizer:
    """The default model's tokenizer (no weights read): it sizes the prompts."""
    from penstock.engine.loader import read_prompt_side
    from penstock.engine.locator import locate_chat_model

    return read_prompt_side(locate_chat_model(None)).tokenizer


def _serve_flags(
    url: str | None, model: str, slo: str, rate: float | None, multiples: str, duration: float, seed: int
) -> list[str]:
    flags = [f"--url {url} --model {model}"] if url else []
    flags += [f"--slo {slo}", f"--multiples {multiples}", f"--duration {duration:g}", f"--seed {seed}"]
    return flags + ([f"--rate {rate:g}"] if rate is not None else []) + ["--json"]


def _serve_table(result: dict[str, Any]) -> Table:
    slo = ",".join(f"{k}={v:g}" for k, v in result["slo"].items())
    table = Table(title=f"penstock bench serve: SLO {slo}, {result['duration_s']:g} s a run")
    for column in (
        "server",
        "capacity (req/s)",
        "goodput by multiple (req/s)",
        "3x / 1x",
        "10x / 1x",
        "refusal p99 (ms)",
        "RSS growth",
    ):
        table.add_column(column, justify="left" if column == "server" else "right")
    sweeps = (
        {"server": result}
        if "url" in result
        else {
            f"{backend}, admission {mode.removeprefix('admission_')}": sweep
            for backend in ("engine", "worker")
            if backend in result
            for mode, sweep in result[backend].items()
        }
    )
    for name, sweep in sweeps.items():
        goodput = ", ".join(f"{m} {g:.2f}" for m, g in sweep.get("goodput_rps", {}).items())
        table.add_row(
            name,
            f"{sweep.get('capacity_rps', float('nan')):.2f}",
            goodput,
            _ratio(sweep.get("goodput_ratio_3x")),
            _ratio(sweep.get("goodput_ratio_10x")),
            _ratio(sweep.get("refusal_p99_ms"), "{:.1f}"),
            _ratio(sweep.get("rss_growth"), "{:+.1%}"),
        )
    return table


def _ratio(value: float | None, form: str = "{:.2f}") -> str:
    return "n/a" if value is None else form.format(value)
