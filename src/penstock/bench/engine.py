"""`penstock bench engine`: Penstock's LLMEngine against transformers' `generate`, same model, same thread.

Three measurements on one seeded workload of real text, in the determinism mode asked for (the
serving default, batch_invariant, unless told): throughput with every request submitted at once,
single-stream decode speed, and time to first token with and without a warm prefix cache. Then what
batch invariance costs: the throughput run in both modes, turn about (fast, invariant, invariant,
fast), and each mode's share of 56 chat prompts whose 32-token greedy answer is the fp32 reference's.
"""

from __future__ import annotations

import os
import shlex
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from penstock.bench import engine_side, hf_baseline
from penstock.bench.answers import answers, chat_requests, match_share, reference_answers
from penstock.bench.chat_prompts import CHAT_QUESTIONS
from penstock.bench.fidelity import Fidelity, measure_fidelity
from penstock.bench.progress import NoProgress, Progress
from penstock.bench.workload import FULL, QUICK, Workload, WorkloadSpec, build_workload
from penstock.engine.kernels import Determinism
from penstock.engine.kernels.kernel_choice import AttentionChoice
from penstock.engine.kernels.quant import HybridLinear
from penstock.engine.loader import LoadedModel, load_chat_model
from penstock.engine.locator import locate_chat_model
from penstock.engine.served import DTYPES, choose_attention, quantization


@dataclass(frozen=True, slots=True)
class BenchOptions:
    quick: bool = False
    requests: int | None = None  # None: the workload's own count (64, or 8 with quick)
    seed: int = 0
    kv_fraction: float = 1.0
    dtype: str = "float32"
    threads: int | None = None  # None: torch's default
    weights: str = "auto"  # the engine side's weights, as a deployment sets them (auto: int4 for 4-bit GGUFs)
    kv_dtype: str = "auto"  # the engine's KV cache, as a deployment sets it (auto: the faster, measured)
    attention: str = "auto"  # the engine's attention kernel, as a deployment sets it (auto: measured)
    determinism: Determinism = "batch_invariant"  # the mode of the three measurements
    # The peer runs in each of these and its best counts, as its best batch size does: on a CPU with
    # native bf16, transformers in bf16 is 2-3x faster than in fp32, and the engine's own matmuls may be bf16.
    hf_dtypes: tuple[str, ...] = ("float32", "bfloat16")

    @property
    def spec(self) -> WorkloadSpec:
        spec = QUICK if self.quick else FULL
        return spec if self.requests is None else replace(spec, requests=self.requests)

    @property
    def command(self) -> str:
        """The command line that reproduces this run."""
        args = ["penstock", "bench", "engine", "--json", *(["--quick"] if self.quick else [])]
        args += ["--requests", str(self.spec.requests), "--seed", str(self.seed)]
        args += ["--kv-fraction", str(self.kv_fraction), "--dtype", self.dtype]
        args += ["--threads", str(self.threads)] if self.threads is not None else []
        args += ["--weights", self.weights, "--kv-dtype", self.kv_dtype, "--attention", self.attention]
        args += ["--determinism", self.determinism]
        args += [arg for dtype in self.hf_dtypes for arg in ("--hf-dtype", dtype)]
        return shlex.join(args)


@dataclass(frozen=True, slots=True)
class EngineBenchResult:
    engine_tok_s: float
    hf_tok_s: float  # the peer's best: over its batch sizes and dtypes
    hf_best_batch: int
    hf_dtype: str  # the dtype of the peer's best throughput run
    throughput_ratio: float
    engine_single_tok_s: float
    hf_single_tok_s: float  # the peer's best over its dtypes
    hf_single_dtype: str
    single_stream_ratio: float
    prefix_cold_ttft_s: float
    prefix_warm_ttft_s: float
    prefix_ttft_speedup: float
    preemptions: int
    failed_requests: int
    requests: int
    requested_tokens: int
    engine_output_tokens: int
    engine_early_stops: int  # requests the model's eos ended before their length
    hf_output_tokens: int
    engine_wall_s: float
    hf_wall_s: float
    hf_tok_s_by_dtype_batch: dict[str, dict[str, float]]
    hf_single_tok_s_by_dtype: dict[str, float]
    load_avg_1m: dict[str, float]  # the machine's load when each throughput run ended: others' work skews both
    kv_cache_tokens: int
    kv_fraction: float
    dtype: str
    weights: str
    quantized: bool  # what `weights` came to: the hybrid quantized kernels in use
    dense_weights: str  # the dtype the engine's many-row matmuls ran in (bf16 where that timed faster)
    # Teacher-forced against the exact fp32 weights on real text (bench/fidelity.py): the quantized
    # kernels that decodes use, and the dense copies that prefill and busy steps use; 0 and 1 when exact.
    few_row_kl_vs_fp32: float
    few_row_top1_vs_fp32: float
    dense_kl_vs_fp32: float
    dense_top1_vs_fp32: float
    kv_dtype: str  # what the KV cache dtype setting came to
    attention: str  # what the attention setting came to: native or sdpa (fast); batch_invariant's own
    determinism: str  # the mode of the measurements above
    engine_tok_s_by_determinism: dict[str, float]  # the throughput run in each mode, mean of two turns
    invariance_cost_pct: float  # 100 · (1 - batch_invariant / fast throughput)
    fp32_answer_match: dict[str, float]  # per mode: share of chat prompts answered as the fp32 reference does
    answer_prompts: int
    torch_threads: int
    seed: int
    model: str
    command: str
    peer: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_engine_bench(options: BenchOptions, progress: Progress | None = None) -> EngineBenchResult:
    """The whole benchmark, on this thread: load both models, then each side's three measurements."""
    progress = progress or NoProgress()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    path = locate_chat_model(None)
    progress.phase("loading the model", 1)
    # Loaded as `fast` loads it: the invariant kernels read the exact grids and fp32 weights beside its kernels.
    loaded = load_chat_model(path, dtype=DTYPES[options.dtype], quantize=quantization(options.weights, path))
    progress.advance()
    workload = build_workload(options.spec, loaded.tokenizer, options.seed)
    attentions = _attentions(loaded, options)
    ours = _engine_side(loaded, workload, attentions[options.determinism], options, progress)
    by_mode = _throughput_by_mode(loaded, workload, attentions, progress)
    progress.phase("penstock, fidelity to fp32", 1)
    fidelity = measure_fidelity(loaded, ("few_rows", "dense"), options.seed)
    matches = _answer_match(loaded, attentions, options.spec.answer_prompts)
    progress.advance()
    eos = loaded.tokenizer.eos_token_ids[0]
    peers = [_hf_side(path, dtype, workload, options.spec.hf_batches, eos, progress) for dtype in options.hf_dtypes]
    return _result(options, loaded, workload, ours, peers, fidelity, _Invariance(by_mode, matches))


MODES: tuple[Determinism, ...] = ("batch_invariant", "fast")


@dataclass(frozen=True, slots=True)
class _Invariance:
    tok_s: dict[str, float]
    answer_match: dict[str, float]


def _attentions(loaded: LoadedModel, options: BenchOptions) -> dict[str, AttentionChoice]:
    """Each mode's cache and attention, as a deployment's settings give them (served.engine_config's rules)."""
    invariant_kv = DTYPES["float32" if options.kv_dtype == "auto" else options.kv_dtype]
    return {
        "batch_invariant": AttentionChoice(invariant_kv, native=False),
        "fast": choose_attention(options.kv_dtype, options.attention, loaded.args, loaded.dtype),
    }


def _throughput_by_mode(
    loaded: LoadedModel, workload: Workload, attentions: dict[str, AttentionChoice], progress: Progress
) -> dict[str, float]:
    """Both modes' throughput runs turn about, fast first and last, so drift on the machine hits both alike."""
    kv_tokens = engine_side.kv_tokens_for(workload.throughput)
    runs: dict[str, list[float]] = {mode: [] for mode in MODES}
    for mode in ("fast", "batch_invariant", "batch_invariant", "fast"):
        progress.phase(f"penstock, {mode}, all requests at once", workload.requested_tokens)
        engine = engine_side.new_engine(loaded, kv_tokens, attentions[mode], determinism=mode)
        engine_side.run(engine, [workload.warmup])
        runs[mode].append(engine_side.run(engine, workload.throughput, progress).tok_s)
    return {mode: statistics.mean(tok_s) for mode, tok_s in runs.items()}


def _answer_match(loaded: LoadedModel, attentions: dict[str, AttentionChoice], prompts: int) -> dict[str, float]:
    requests = chat_requests(loaded, CHAT_QUESTIONS[:prompts])
    reference = reference_answers(loaded, requests)
    return {mode: match_share(answers(loaded, requests, attentions[mode], mode), reference) for mode in MODES}


@dataclass(frozen=True, slots=True)
class _EngineFigures:
    run: engine_side.EngineRun
    kv_tokens: int
    attention: AttentionChoice
    load_1m: float
    single_tok_s: float
    cold_ttft_s: float
    warm_ttft_s: float


@dataclass(frozen=True, slots=True)
class _HFFigures:
    dtype: str
    runs: list[hf_baseline.HFRun]
    load_1m: float
    single_tok_s: float


def _engine_side(
    loaded: LoadedModel, workload: Workload, attention: AttentionChoice, options: BenchOptions, progress: Progress
) -> _EngineFigures:
    mode = options.determinism
    kv_tokens = engine_side.kv_tokens_for(workload.throughput, options.kv_fraction)
    engine = engine_side.new_engine(loaded, kv_tokens, attention, determinism=mode)
    engine_side.run(engine, [workload.warmup])  # first calls allocate and spin up the thread pool
    progress.phase("penstock, all requests at once", workload.requested_tokens)
    throughput = engine_side.run(engine, workload.throughput, progress)
    load_1m = os.getloadavg()[0]
    progress.phase("penstock, single stream and prefix cache", 1)
    single = engine_side.single_stream_tok_s(loaded, workload.single, attention, mode)
    cold, warm = engine_side.prefix_ttft_s(loaded, workload.warmup, workload.prefixed, attention, mode)
    progress.advance()
    return _EngineFigures(throughput, kv_tokens, attention, load_1m, single, cold, warm)


def _hf_side(
    path: Path, dtype: str, workload: Workload, batches: tuple[int, ...], eos: int, progress: Progress
) -> _HFFigures:
    progress.phase(f"loading transformers, {dtype}", 1)
    model = hf_baseline.load_hf_model(path, DTYPES[dtype])
    progress.advance()
    hf_baseline.generate(model, [workload.warmup], 2, eos)
    runs = hf_baseline.best_run(model, workload.throughput, batches, eos, progress)
    load_1m = os.getloadavg()[0]
    progress.phase(f"transformers, {dtype}, single stream", 1)
    single = hf_baseline.single_stream_tok_s(model, workload.single, eos)
    progress.advance()
    return _HFFigures(dtype, runs, load_1m, single)


def _result(
    options: BenchOptions,
    loaded: LoadedModel,
    workload: Workload,
    ours: _EngineFigures,
    peers: list[_HFFigures],
    fidelity: dict[str, Fidelity],
    invariance: _Invariance,
) -> EngineBenchResult:
    peer = max(peers, key=lambda p: p.runs[0].tok_s)
    hybrids = [m for m in loaded.model.modules() if isinstance(m, HybridLinear)]
    best = peer.runs[0]
    single = max(peers, key=lambda p: p.single_tok_s)
    return EngineBenchResult(
        engine_tok_s=ours.run.tok_s,
        hf_tok_s=best.tok_s,
        hf_best_batch=best.batch,
        hf_dtype=peer.dtype,
        throughput_ratio=ours.run.tok_s / best.tok_s,
        engine_single_tok_s=ours.single_tok_s,
        hf_single_tok_s=single.single_tok_s,
        hf_single_dtype=single.dtype,
        single_stream_ratio=ours.single_tok_s / single.single_tok_s,
        prefix_cold_ttft_s=ours.cold_ttft_s,
        prefix_warm_ttft_s=ours.warm_ttft_s,
        prefix_ttft_speedup=ours.cold_ttft_s / ours.warm_ttft_s,
        preemptions=ours.run.preemptions,
        failed_requests=ours.run.failed,
        requests=len(workload.throughput),
        requested_tokens=workload.requested_tokens,
        engine_output_tokens=ours.run.output_tokens,
        engine_early_stops=ours.run.early_stops,
        hf_output_tokens=best.output_tokens,
        engine_wall_s=ours.run.wall_s,
        hf_wall_s=best.wall_s,
        hf_tok_s_by_dtype_batch={
            p.dtype: {str(r.batch): r.tok_s for r in sorted(p.runs, key=lambda r: r.batch)} for p in peers
        },
        hf_single_tok_s_by_dtype={p.dtype: p.single_tok_s for p in peers},
        load_avg_1m={"engine": ours.load_1m, **{f"hf_{p.dtype}": p.load_1m for p in peers}},
        kv_cache_tokens=ours.kv_tokens,
        kv_fraction=options.kv_fraction,
        dtype=options.dtype,
        weights=options.weights,
        quantized=bool(hybrids),
        dense_weights=str(hybrids[0].dense_dtype if hybrids else loaded.dtype).removeprefix("torch."),
        few_row_kl_vs_fp32=fidelity["few_rows"].kl_divergence,
        few_row_top1_vs_fp32=fidelity["few_rows"].top1_agreement,
        dense_kl_vs_fp32=fidelity["dense"].kl_divergence,
        dense_top1_vs_fp32=fidelity["dense"].top1_agreement,
        kv_dtype=str(ours.attention.kv_dtype).removeprefix("torch."),
        attention=_attention_name(options.determinism, ours.attention),
        determinism=options.determinism,
        engine_tok_s_by_determinism=invariance.tok_s,
        invariance_cost_pct=100 * (1 - invariance.tok_s["batch_invariant"] / invariance.tok_s["fast"]),
        fp32_answer_match=invariance.answer_match,
        answer_prompts=options.spec.answer_prompts,
        torch_threads=torch.get_num_threads(),
        seed=options.seed,
        model=loaded.name,
        command=options.command,
        peer=f"transformers {hf_baseline.transformers_version()} generate, static batches, left padding",
    )


def _attention_name(determinism: str, attention: AttentionChoice) -> str:
    if determinism == "batch_invariant":
        return "batch_invariant"
    return "native" if attention.native else "sdpa"
