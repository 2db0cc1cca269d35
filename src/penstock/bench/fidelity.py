"""How far the engine's fast weight paths move the model's predictions from its exact fp32 weights.

Teacher-forced on real text: every position's next-token distribution from one path against fp32's,
as the mean KL divergence KL(fp32 ‖ path) in nats and the share of positions whose most likely token
is the same. Speed is only worth having at a fidelity you know.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from penstock.bench.workload import text_tokens
from penstock.engine.kernels.quant import Route, every_call_through
from penstock.engine.loader import LoadedModel

SAMPLES = 8
SAMPLE_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Fidelity:
    kl_divergence: float  # mean per position, nats
    top1_agreement: float  # share of positions whose argmax matches fp32's


def measure_fidelity(loaded: LoadedModel, routes: tuple[Route, ...], seed: int = 0) -> dict[str, Fidelity]:
    """Each route's fidelity against the exact weights, on SAMPLES slices of SAMPLE_TOKENS tokens of text."""
    pool = text_tokens(loaded.tokenizer, 20 * SAMPLES * SAMPLE_TOKENS)
    rng = random.Random(seed)
    starts = [rng.randrange(len(pool) - SAMPLE_TOKENS) for _ in range(SAMPLES)]
    samples = [pool[start : start + SAMPLE_TOKENS] for start in starts]
    reference = _logits(loaded, samples, "exact")
    return {route: _compare(_logits(loaded, samples, route), reference) for route in routes}


def _logits(loaded: LoadedModel, samples: list[list[int]], route: Route) -> Tensor:
    positions = torch.arange(SAMPLE_TOKENS, device=loaded.device)
    with torch.inference_mode(), every_call_through(loaded.model, route):
        rows = [loaded.model(torch.tensor([s], device=loaded.device), positions)[0] for s in samples]
    return torch.cat(rows).float()


def _compare(logits: Tensor, reference: Tensor) -> Fidelity:
    expected = F.log_softmax(reference, dim=-1)
    kl = F.kl_div(F.log_softmax(logits, dim=-1), expected, log_target=True, reduction="batchmean")
    top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
    return Fidelity(float(kl), float(top1))
