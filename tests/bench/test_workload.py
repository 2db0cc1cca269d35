from penstock.bench.workload import QUICK, build_workload
from penstock.engine.loader import LoadedModel


def test_the_workload_is_seeded_and_within_its_ranges(loaded: LoadedModel) -> None:
    workload = build_workload(QUICK, loaded.tokenizer, seed=3)
    assert workload == build_workload(QUICK, loaded.tokenizer, seed=3)
    assert workload != build_workload(QUICK, loaded.tokenizer, seed=4)
    assert len(workload.throughput) == QUICK.requests
    for request in workload.throughput:
        assert QUICK.prompt_len[0] <= len(request.prompt) <= QUICK.prompt_len[1]
        assert QUICK.output_len[0] <= request.max_tokens <= QUICK.output_len[1]
    assert workload.requested_tokens == sum(r.max_tokens for r in workload.throughput)


def test_prefixed_requests_share_the_prefix_and_differ_after_it(loaded: LoadedModel) -> None:
    workload = build_workload(QUICK, loaded.tokenizer, seed=0)
    requests = [workload.warmup, *workload.prefixed]
    assert len(workload.prefixed) == QUICK.prefix_requests
    assert len({r.prompt[: QUICK.prefix_len] for r in requests}) == 1
    assert len({r.prompt[QUICK.prefix_len :] for r in requests}) == len(requests)
    assert all(r.max_tokens == 1 for r in requests)


def test_prompts_are_real_text(loaded: LoadedModel) -> None:
    text = loaded.tokenizer.decode(build_workload(QUICK, loaded.tokenizer, seed=0).single.prompt)
    assert sum(c.isalpha() for c in text) > len(text) / 3
