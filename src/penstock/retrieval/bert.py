"""A BERT encoder in plain torch, for sentence-transformers checkpoints (all-MiniLM-L6-v2 and kin).

transformers' BertModel spends about 20 ms of Python and mask bookkeeping on a ten-token query
before any arithmetic (measured on one core here, where the arithmetic takes about 2 ms); a query
embedding sits on every retrieval's critical path, so the encoder is written out here: embeddings,
then per layer self-attention and a GELU feed-forward, each followed by a residual LayerNorm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True, slots=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        raw = json.loads((path / "config.json").read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only BERT with GELU and absolute positions is supported")
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})


class Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.heads = c.num_attention_heads
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)  # the checkpoint's query, key, value, fused
        self.attention_out = nn.Linear(c.hidden_size, c.hidden_size)
        self.attention_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.up = nn.Linear(c.hidden_size, c.intermediate_size)
        self.down = nn.Linear(c.intermediate_size, c.hidden_size)
        self.out_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # Attention in fp32 whatever the weights: it is under 1% of the work at chunk lengths, and bf16
        # attention changed a short text's vector by 1e-3 depending on the batch's padding.
        attended = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        attended = attended.to(x.dtype).transpose(1, 2).reshape(b, t, d)
        x = self.attention_norm(x + self.attention_out(attended))
        return self.out_norm(x + self.down(F.gelu(self.up(x))))


class BertEncoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.words = nn.Embedding(c.vocab_size, c.hidden_size)
        self.positions = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_types = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(batch, tokens) ids and 0/1 mask → (batch, tokens, hidden) contextual embeddings."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.words(ids) + self.positions(positions) + self.token_types.weight[0])
        # Padding keys get no attention; a batch without padding needs no mask at all.
        mask = None if bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, mask)
        return x


def load_bert(path: Path) -> BertEncoder:
    config = BertConfig.read(path)
    weights = load_file(str(path / "model.safetensors"))
    prefix = "bert." if any(k.startswith("bert.") for k in weights) else ""
    model = BertEncoder(config)
    model.load_state_dict(_renamed(weights, prefix, config.num_hidden_layers))
    return model.eval()


def _renamed(w: dict[str, Tensor], prefix: str, layers: int) -> dict[str, Tensor]:
    e = f"{prefix}embeddings."
    out = {
        "words.weight": w[e + "word_embeddings.weight"],
        "positions.weight": w[e + "position_embeddings.weight"],
        "token_types.weight": w[e + "token_type_embeddings.weight"],
        "norm.weight": w[e + "LayerNorm.weight"],
        "norm.bias": w[e + "LayerNorm.bias"],
    }
    for i in range(layers):
        src, dst = f"{prefix}encoder.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [w[f"{src}attention.self.{part}.{kind}"] for part in ("query", "key", "value")]
            out[f"{dst}qkv.{kind}"] = torch.cat(qkv)
            out[f"{dst}attention_out.{kind}"] = w[f"{src}attention.output.dense.{kind}"]
            out[f"{dst}attention_norm.{kind}"] = w[f"{src}attention.output.LayerNorm.{kind}"]
            out[f"{dst}up.{kind}"] = w[f"{src}intermediate.dense.{kind}"]
            out[f"{dst}down.{kind}"] = w[f"{src}output.dense.{kind}"]
            out[f"{dst}out_norm.{kind}"] = w[f"{src}output.LayerNorm.{kind}"]
    return out
