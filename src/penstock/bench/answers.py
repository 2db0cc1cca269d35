"""Fidelity as a user sees it: the share of real chat prompts whose whole greedy answer is the exact
fp32 reference's, token for token.

The reference is the model with its exact fp32 weights everywhere (`weights: fp32`), SDPA over an
fp32 cache. Every side answers all the prompts at once, as a busy server would.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from penstock.bench import engine_side
from penstock.bench.chat_prompts import CHAT_QUESTIONS
from penstock.bench.workload import BenchRequest
from penstock.engine.kernels import Determinism
from penstock.engine.kernels.kernel_choice import AttentionChoice
from penstock.engine.kernels.quant import every_call_through
from penstock.engine.loader import LoadedModel
from penstock.types import Message

ANSWER_TOKENS = 32
EXACT = AttentionChoice(torch.float32, native=False)


def chat_requests(loaded: LoadedModel, questions: Seq[str] = CHAT_QUESTIONS) -> list[BenchRequest]:
    rendered = (loaded.chat_template.render([Message("user", q)]) for q in questions)
    return [BenchRequest(tuple(loaded.tokenizer.encode(text)), ANSWER_TOKENS) for text in rendered]


def answers(
    loaded: LoadedModel, requests: Seq[BenchRequest], attention: AttentionChoice, determinism: Determinism
) -> list[tuple[int, ...]]:
    engine = engine_side.new_engine(loaded, engine_side.kv_tokens_for(requests), attention, determinism=determinism)
    run = engine_side.run(engine, requests)
    return [tuple(tracker.token_ids) for tracker in run.trackers]


def reference_answers(loaded: LoadedModel, requests: Seq[BenchRequest]) -> list[tuple[int, ...]]:
    with every_call_through(loaded.model, "exact"):
        return answers(loaded, requests, EXACT, "fast")


def match_share(answers: Seq[tuple[int, ...]], reference: Seq[tuple[int, ...]]) -> float:
    return sum(a == r for a, r in zip(answers, reference, strict=True)) / len(reference)
