"""What a checkpoint loader hands over: shape, weights, tokenizer and chat template."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from penstock.engine.chat_template import ChatTemplate
from penstock.engine.model import ModelArgs
from penstock.engine.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class Grid:
    """A weight exactly as a quantized file stores it: w = q·scale + low, per group of `group` inputs.

    The product q·scale is exact in fp32 for 4- and 8-bit q and an fp16 scale, so one rounding (of the
    sum) gives the file's dequantized fp32 weight bit for bit, whichever kernel computes it.
    """

    q: Tensor  # (out, in): uint8 in 0..15 (bits 4) or int8 (bits 8)
    scale: Tensor  # (out, in / group) fp32
    low: Tensor  # (out, in / group) fp32
    bits: int
    group: int = 32

    def rows(self, rearrange: Callable[[Tensor], Tensor]) -> Grid:
        """The same grid with its output rows rearranged by `rearrange` (which sees (out, ·) tensors)."""
        return Grid(rearrange(self.q), rearrange(self.scale), rearrange(self.low), self.bits, self.group)

    def dequantized(self) -> Tensor:
        return torch.addcmul(
            self.low.repeat_interleave(self.group, 1), self.q.float(), self.scale.repeat_interleave(self.group, 1)
        )


def concat_grids(grids: list[Grid]) -> Grid | None:
    """Grids stacked by output row (a fused projection), or None where their formats differ."""
    if len({(g.bits, g.group) for g in grids}) != 1:
        return None
    return Grid(
        *(torch.cat([getattr(g, part) for g in grids]) for part in ("q", "scale", "low")), grids[0].bits, grids[0].group
    )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Weights are named as `Transformer` names its parameters; a tied output has no entry.

    `grids` holds, under the same names, the exact quantized form of weights a file stores on a
    4- or 8-bit grid (the batch-invariant kernels multiply with those instead of fp32 copies).
    """

    args: ModelArgs
    state_dict: dict[str, Tensor]
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    grids: dict[str, Grid] = field(default_factory=dict)
