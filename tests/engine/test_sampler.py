from __future__ import annotations

import torch

from penstock.engine.sampler import draw, min_p, request_rng, sample_batch, sample_row, top_k, top_p
from penstock.engine.sequence import Sequence
from penstock.types import SamplingParams

LOGITS = torch.tensor([1.0, 3.0, 2.0, 0.5])


def test_temperature_zero_is_argmax() -> None:
    assert draw(LOGITS, SamplingParams(temperature=0), request_rng(None, torch.device("cpu"))) == 1


def test_top_k_keeps_the_k_best() -> None:
    assert torch.isfinite(top_k(LOGITS, 2)).tolist() == [False, True, True, False]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.softmax(LOGITS, dim=-1)  # ≈ [0.09, 0.64, 0.24, 0.05]
    assert torch.isfinite(top_p(LOGITS, 0.5)).tolist() == [False, True, False, False]
    assert torch.isfinite(top_p(LOGITS, float(probs[1] + 0.01))).tolist() == [False, True, True, False]


def draws(seed: int, n: int = 20) -> list[int]:
    rng = request_rng(seed, torch.device("cpu"))
    return [draw(LOGITS, SamplingParams(temperature=1.0), rng) for _ in range(n)]


def test_a_seed_fixes_the_draws() -> None:
    assert draws(7) == draws(7)
    assert len(set(draws(7))) > 1


def seq_with(params: SamplingParams, prompt: list[int], generated: list[int] = ()) -> Sequence:
    seq = Sequence(prompt, params, max_tokens=8, rng=request_rng(0, torch.device("cpu")))
    seq.token_ids += list(generated)
    return seq


def test_min_p_drops_tokens_far_below_the_best() -> None:
    # probabilities ≈ [0.09, 0.64, 0.24, 0.05]: with min_p 0.2 the bar is 0.128
    assert torch.isfinite(min_p(LOGITS, 0.2)).tolist() == [False, True, True, False]


def test_frequency_and_presence_penalties_count_generated_tokens_only() -> None:
    params = SamplingParams(temperature=0, frequency_penalty=1.0, presence_penalty=0.5)
    # token 1 was generated twice: 3.0 - 2·1.0 - 0.5 = 0.5 < 2.0, so token 2 wins
    assert sample_row(LOGITS, seq_with(params, [0], generated=[1, 1]))[0] == 2
    # in the prompt only, it is not penalised
    assert sample_row(LOGITS, seq_with(params, [1, 1]))[0] == 1


def test_repetition_penalty_covers_the_prompt_too() -> None:
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert sample_row(LOGITS, seq_with(params, [1]))[0] == 2  # 3.0 / 2 = 1.5 < 2.0


def test_token_mask_limits_the_choice() -> None:
    seq = seq_with(SamplingParams(temperature=0), [0])
    seq.token_mask = lambda _: torch.tensor([True, False, False, True])
    assert sample_row(LOGITS, seq)[0] == 0


def test_logprobs_come_from_the_models_distribution() -> None:
    params = SamplingParams(temperature=0, logprobs=True, top_logprobs=2)
    token, logprob = sample_row(LOGITS, seq_with(params, [0]))
    expected = torch.log_softmax(LOGITS, dim=-1)
    assert token == logprob.token_id == 1
    assert abs(logprob.logprob - float(expected[1])) < 1e-6
    assert [t for t, _ in logprob.top] == [1, 2]


def test_batch_fast_path_agrees_with_row_by_row() -> None:
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(3))
    greedy = [seq_with(SamplingParams(temperature=0), [0]) for _ in range(5)]
    assert [t for t, _ in sample_batch(logits, greedy)] == logits.argmax(-1).tolist()
    mixed = [*greedy[:4], seq_with(SamplingParams(temperature=0, logprobs=True), [0])]
    tokens = sample_batch(logits, mixed)
    assert [t for t, _ in tokens] == logits.argmax(-1).tolist()
    assert tokens[-1][1] is not None and tokens[0][1] is None
