from __future__ import annotations

import torch

from penstock.engine.sampler import request_rng, sample, top_k, top_p
from penstock.types import SamplingParams

LOGITS = torch.tensor([1.0, 3.0, 2.0, 0.5])


def test_temperature_zero_is_argmax() -> None:
    assert sample(LOGITS, SamplingParams(temperature=0), request_rng(None, torch.device("cpu"))) == 1


def test_top_k_keeps_the_k_best() -> None:
    assert torch.isfinite(top_k(LOGITS, 2)).tolist() == [False, True, True, False]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.softmax(LOGITS, dim=-1)  # ≈ [0.09, 0.64, 0.24, 0.05]
    assert torch.isfinite(top_p(LOGITS, 0.5)).tolist() == [False, True, False, False]
    assert torch.isfinite(top_p(LOGITS, float(probs[1] + 0.01))).tolist() == [False, True, True, False]


def draws(seed: int, n: int = 20) -> list[int]:
    rng = request_rng(seed, torch.device("cpu"))
    return [sample(LOGITS, SamplingParams(temperature=1.0), rng) for _ in range(n)]


def test_a_seed_fixes_the_draws() -> None:
    assert draws(7) == draws(7)
    assert len(set(draws(7))) > 1
