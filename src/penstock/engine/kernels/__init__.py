"""The engine's one seam to its kernels: a `Forward` turns a step's tokens into logits at its sampling rows.

The engine core (sequence, block manager, scheduler, model runner, engine loop) knows only this
protocol and `choose_forward`; which kernels run, and the CPU speed stack behind them, live here:

    batch_invariant  every row through csrc/batch_invariant.c: the same bits whatever shares the step
    fast             the model's PyTorch forward with the hybrid int4/bf16 layers, the native paged
                     attention and the fused few-row decode, each where kernel_choice found it faster
    (portable)       the model's PyTorch forward with SDPA: CUDA, bf16 models, no C compiler

A CUDA backend plugs in at the same seam.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

import structlog
import torch
from torch import Tensor

from penstock.engine.kernels.batch_invariant import BatchInvariantForward
from penstock.engine.kernels.fused_decode import FusedDecode
from penstock.engine.kernels.native import load_attention_kernel, load_layer_steps
from penstock.engine.kernels.paged_forward import PagedForward
from penstock.engine.paged_attention import PagedKVCache, StepInput

if TYPE_CHECKING:  # the loader imports kernel_choice from this package
    from penstock.engine.loader import LoadedModel

log = structlog.get_logger("penstock.engine")
Determinism = Literal["batch_invariant", "fast"]


class Forward(Protocol):
    name: str  # what the logs and doctor call it

    def __call__(self, step: StepInput, cache: PagedKVCache) -> Tensor:
        """Logits (len(step.logits_at), vocab) at the step's sampling rows; the step's keys and values cached."""
        ...


def choose_forward(loaded: LoadedModel, determinism: Determinism, native_attention: bool) -> Forward:
    """The forward for this model and setting; the one place a step's path is chosen."""
    if determinism == "batch_invariant":
        invariant = BatchInvariantForward.build(loaded)
        if invariant is not None:
            return invariant
        log.warning(
            "determinism_unavailable",
            reason="the batch-invariant kernels need an fp32 model on the CPU and a C compiler",
            using="sdpa",
        )
        return PagedForward(loaded)
    native = native_attention and loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    kernel = load_attention_kernel() if native else None
    fused = FusedDecode.build(loaded.model, load_layer_steps()) if kernel is not None else None
    return PagedForward(loaded, kernel, fused)
