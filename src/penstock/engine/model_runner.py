"""Tensors in, logits out: one forward over the step's chunks, prefill and decode mixed."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch
from torch import Tensor

from penstock.engine.fused_decode import FusedDecode
from penstock.engine.loader import LoadedModel
from penstock.engine.native import AttentionKernel
from penstock.engine.paged_attention import PagedAttention, PagedKVCache, SeqSlice
from penstock.engine.scheduler import Chunk


class ModelRunner:
    def __init__(
        self,
        loaded: LoadedModel,
        cache: PagedKVCache,
        attention_kernel: AttentionKernel | None = None,
        fused: FusedDecode | None = None,
    ) -> None:
        self.loaded = loaded
        self.cache = cache
        self.attention_kernel = attention_kernel
        self.fused = fused  # few-row steps of an int4 model, where it applies (fused_decode.py)

    @torch.inference_mode()
    def run(self, chunks: Seq[Chunk]) -> Tensor:
        """Logits (n, vocab_size) at the last token of each chunk that samples, in chunk order."""
        device = self.loaded.device
        tokens = [t for c in chunks for t in c.seq.token_ids[c.start : c.start + c.length]]
        positions = torch.cat([torch.arange(c.start, c.start + c.length) for c in chunks])
        ends = torch.tensor([c.length for c in chunks]).cumsum(0) - 1
        sampling = ends[torch.tensor([c.samples for c in chunks])]
        slices = [SeqSlice(c.seq.block_table, c.start, c.length) for c in chunks]
        context = PagedAttention.build(self.cache, slices, device, self.attention_kernel)
        ids = torch.tensor([tokens], device=device)
        if self.fused is not None and self.fused.applies(len(tokens), context):
            return self.fused.forward(ids, positions, context, sampling)[0]
        return self.loaded.model(ids, positions.to(device), context, logits_at=sampling.to(device))[0]
