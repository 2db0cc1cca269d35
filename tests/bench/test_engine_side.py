from penstock.bench import engine_side
from penstock.bench.progress import NoProgress
from penstock.bench.workload import QUICK, BenchRequest, build_workload
from penstock.engine.loader import LoadedModel
from penstock.errors import ContextLengthExceeded


def test_a_cache_for_the_whole_workload_runs_it_without_preemption(loaded: LoadedModel) -> None:
    requests = build_workload(QUICK, loaded.tokenizer, seed=0).throughput
    run = engine_side.run(engine_side.new_engine(loaded, engine_side.kv_tokens_for(requests)), requests)
    assert run.failed == 0 and run.preemptions == 0
    for tracker, request in zip(run.trackers, requests, strict=True):
        assert tracker.finished and 0 < tracker.tokens <= request.max_tokens
    assert run.early_stops == sum(t.tokens < r.max_tokens for t, r in zip(run.trackers, requests, strict=True))
    assert run.output_tokens == sum(t.tokens for t in run.trackers) and run.tok_s > 0


def test_a_request_the_engine_refuses_counts_as_failed(loaded: LoadedModel) -> None:
    run = engine_side.run(engine_side.new_engine(loaded, 32), [BenchRequest(tuple(range(100, 140)), 8)])
    assert run.failed == 1 and isinstance(run.trackers[0].error, ContextLengthExceeded)


def test_the_cache_is_never_smaller_than_the_largest_request() -> None:
    requests = [BenchRequest(tuple(range(100)), 60), BenchRequest(tuple(range(10)), 5)]
    assert engine_side.kv_tokens_for(requests) == (10 + 1) * 16
    assert engine_side.kv_tokens_for(requests, 0.0) == 10 * 16


def test_the_tracker_times_the_first_token_and_the_decode_after_it() -> None:
    tracker = engine_side.Tracker(3, NoProgress(), submitted=1.0, token_times=[2.0, 2.5, 3.0])
    assert tracker.ttft_s == 1.0 and tracker.decode_tok_s == 2.0
    assert tracker.failed  # no event said it finished


def test_the_prefix_test_times_both_caches(loaded: LoadedModel) -> None:
    workload = build_workload(QUICK, loaded.tokenizer, seed=0)
    cold, warm = engine_side.prefix_ttft_s(loaded, workload.warmup, workload.prefixed)
    assert cold > 0 and warm > 0
