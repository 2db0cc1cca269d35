"""The model's own PyTorch forward over the paged cache: SDPA per sequence, or the native attention
kernel, and the fused few-row decode where an int4 model has one. The `fast` determinism's path, and
the portable one (CUDA, bf16 models, no C compiler).

Which kernel a row meets here depends on the step it shares (the hybrid layers' row crossover, the
fused decode below it, GEMM blocking by shape): a token's logits may differ with its batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from penstock.engine.kernels.fused_decode import FusedDecode
from penstock.engine.kernels.native import AttentionKernel
from penstock.engine.paged_attention import PagedAttention, PagedKVCache, StepInput

if TYPE_CHECKING:  # the loader imports kernel_choice from this package
    from penstock.engine.loader import LoadedModel


class PagedForward:
    def __init__(
        self, loaded: LoadedModel, kernel: AttentionKernel | None = None, fused: FusedDecode | None = None
    ) -> None:
        self.loaded = loaded
        self.kernel = kernel
        self.fused = fused  # few-row steps of an int4 model, where it applies (fused_decode.py)

    @property
    def name(self) -> str:
        return "native" if self.kernel is not None else "sdpa"

    def __call__(self, step: StepInput, cache: PagedKVCache) -> Tensor:
        device = self.loaded.device
        positions = step.positions()
        context = PagedAttention.build(cache, step.slices, device, self.kernel)
        ids = torch.tensor([list(step.tokens)], device=device)
        if self.fused is not None and self.fused.applies(len(step.tokens), context):
            return self.fused.forward(ids, positions, context, step.logits_at)[0]
        return self.loaded.model(ids, positions.to(device), context, logits_at=step.logits_at.to(device))[0]
