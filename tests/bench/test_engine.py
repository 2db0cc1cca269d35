"""The whole quick benchmark, in process, with a KV cache far too small for its workload."""

import json

import pytest

from penstock.bench.engine import BenchOptions, EngineBenchResult, run_engine_bench

REQUIRED = (
    *("engine_tok_s", "hf_tok_s", "hf_best_batch", "throughput_ratio"),
    *("engine_single_tok_s", "hf_single_tok_s", "single_stream_ratio"),
    *("prefix_cold_ttft_s", "prefix_warm_ttft_s", "prefix_ttft_speedup"),
    *("preemptions", "failed_requests", "requests", "dtype", "kv_cache_tokens", "command", "peer"),
)
OPTIONS = BenchOptions(quick=True, kv_fraction=0.05)


@pytest.fixture(scope="module")
def result() -> EngineBenchResult:
    return run_engine_bench(OPTIONS)


def test_the_result_has_every_figure_and_is_json(result: EngineBenchResult) -> None:
    figures = json.loads(json.dumps(result.to_dict()))
    assert set(REQUIRED) <= set(figures)
    assert all(figures[k] > 0 for k in REQUIRED if k.endswith(("_tok_s", "_ttft_s", "_ratio", "_speedup")))


def test_fidelity_to_fp32_is_reported_for_both_weight_paths(result: EngineBenchResult) -> None:
    assert result.quantized  # the shipped GGUF is 4-bit: auto swaps in the hybrid layers
    for kl, top1 in (
        (result.few_row_kl_vs_fp32, result.few_row_top1_vs_fp32),
        (result.dense_kl_vs_fp32, result.dense_top1_vs_fp32),
    ):
        assert 0 <= kl < 0.01 and 0.95 < top1 <= 1


def test_both_determinism_modes_are_measured_against_each_other_and_fp32(result: EngineBenchResult) -> None:
    assert result.determinism == "batch_invariant" and result.attention == "batch_invariant"
    tok_s = result.engine_tok_s_by_determinism
    assert set(tok_s) == set(result.fp32_answer_match) == {"batch_invariant", "fast"} and min(tok_s.values()) > 0
    assert result.invariance_cost_pct == pytest.approx(100 * (1 - tok_s["batch_invariant"] / tok_s["fast"]))
    assert result.answer_prompts == 16 and all(0 <= share <= 1 for share in result.fp32_answer_match.values())
    # exact weights and fp32 arithmetic: whole answers stay the reference's but for a rare near-tie
    assert result.fp32_answer_match["batch_invariant"] >= 0.75


def test_a_small_cache_preempts_and_fails_nothing(result: EngineBenchResult) -> None:
    assert result.preemptions > 0 and result.failed_requests == 0


def test_the_counts_agree(result: EngineBenchResult) -> None:
    assert result.requests == 8 and result.hf_output_tokens == result.requested_tokens
    assert result.engine_output_tokens <= result.requested_tokens
    assert (result.engine_output_tokens == result.requested_tokens) == (result.engine_early_stops == 0)
    assert result.throughput_ratio == pytest.approx(result.engine_tok_s / result.hf_tok_s)
    # The peer's best run, over its batch sizes and both dtypes, is what the ratio is against.
    assert set(result.hf_tok_s_by_dtype_batch) == set(result.hf_single_tok_s_by_dtype) == {"float32", "bfloat16"}
    by_run = {(d, b): t for d, runs in result.hf_tok_s_by_dtype_batch.items() for b, t in runs.items()}
    assert result.hf_tok_s == max(by_run.values()) == by_run[result.hf_dtype, str(result.hf_best_batch)]
    assert result.hf_single_tok_s == max(result.hf_single_tok_s_by_dtype.values())


def test_the_command_reproduces_the_run(result: EngineBenchResult) -> None:
    assert result.command == OPTIONS.command
    assert "--quick" in result.command and "--kv-fraction 0.05" in result.command
    assert result.peer.startswith("transformers ") and result.dtype == "float32"
