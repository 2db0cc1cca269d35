"""Tensors in, logits out: one forward over the step's chunks, prefill and decode mixed."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch
from torch import Tensor

from penstock.engine.kernels import Forward
from penstock.engine.loader import LoadedModel
from penstock.engine.paged_attention import PagedKVCache, SeqSlice, StepInput
from penstock.engine.scheduler import Chunk


class ModelRunner:
    def __init__(self, loaded: LoadedModel, cache: PagedKVCache, forward: Forward) -> None:
        self.loaded = loaded
        self.cache = cache
        self.forward = forward

    @torch.inference_mode()
    def run(self, chunks: Seq[Chunk]) -> Tensor:
        """Logits (n, vocab_size) at the last token of each chunk that samples, in chunk order."""
        tokens = [t for c in chunks for t in c.seq.token_ids[c.start : c.start + c.length]]
        ends = torch.tensor([c.length for c in chunks]).cumsum(0) - 1
        sampling = ends[torch.tensor([c.samples for c in chunks])]
        slices = [SeqSlice(c.seq.block_table, c.start, c.length) for c in chunks]
        return self.forward(StepInput(tokens, slices, sampling), self.cache)
