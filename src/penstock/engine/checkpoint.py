"""What a checkpoint loader hands over: shape, weights, tokenizer and chat template."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from penstock.engine.chat_template import ChatTemplate
from penstock.engine.model import ModelArgs
from penstock.engine.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Weights are named as `Transformer` names its parameters; a tied output has no entry."""

    args: ModelArgs
    state_dict: dict[str, Tensor]
    tokenizer: Tokenizer
    chat_template: ChatTemplate
