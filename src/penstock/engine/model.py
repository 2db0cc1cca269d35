"""A Llama-family transformer in plain PyTorch: tokens, positions and a KV cache in, logits out.

RoPE uses the Hugging Face rotate-half layout; the GGUF loader un-permutes llama.cpp's Q/K rows so one
implementation serves both checkpoint formats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

W = TypeVar("W")


@dataclass(frozen=True, slots=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float
    rope_theta: float
    max_seq_len: int
    tie_embeddings: bool
    head_dim: int


class AttentionContext(Protocol):
    """Where keys and values live between steps, and how queries see them.

    q is (B, n_heads, T, head_dim); k and v are (B, n_kv_heads, T, head_dim) for this step's tokens,
    already rotated. Returns the attention output shaped like q.
    """

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


class NoCache:
    """A whole sequence in one forward: plain causal attention, nothing kept."""

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=True)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:  # one fused call; the same numbers as the steps below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalise in fp32 and cast back before the scale, as the reference implementation does.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin of shape (T, head_dim) for the given absolute positions."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Q, K and V come from one fused projection (`wqkv`, see fuse_projections): one matmul, not three."""

    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wqkv = nn.Linear(args.dim, (args.n_heads + 2 * args.n_kv_heads) * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, context: AttentionContext) -> Tensor:
        b, t, _ = x.shape
        qkv = self.wqkv(x).view(b, t, self.n_heads + 2 * self.n_kv_heads, self.head_dim).transpose(1, 2)
        qk, v = qkv.split((self.n_heads + self.n_kv_heads, self.n_kv_heads), dim=1)
        q, k = apply_rope(qk, cos, sin).split((self.n_heads, self.n_kv_heads), dim=1)  # one rotation for both
        y = context.attend(self.layer, q, k, v)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), with w1 and w3 fused into one projection (`w13`)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w13 = nn.Linear(args.dim, 2 * args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


FUSED = {
    "attention.wqkv": ("attention.wq", "attention.wk", "attention.wv"),
    "feed_forward.w13": ("feed_forward.w1", "feed_forward.w3"),
}


def fuse_projections(
    weights: dict[str, W], n_layers: int, concat: Callable[[list[W]], W | None] = torch.cat
) -> dict[str, W]:
    """Checkpoint weights (named per projection) → this model's fused projections, concatenated by output row.

    A projection whose parts are not all present, or that `concat` cannot join (None), is left out.
    """
    fused = dict(weights)
    for layer in range(n_layers):
        for target, parts in FUSED.items():
            names = [f"layers.{layer}.{part}.weight" for part in parts]
            found = [fused.pop(name) for name in names if name in fused]
            joined = concat(found) if len(found) == len(names) else None
            if joined is not None:
                fused[f"layers.{layer}.{target}.weight"] = joined
    return fused


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, layer)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, context: AttentionContext) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, context)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        context: AttentionContext | None = None,
        *,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """tokens (B, T) at absolute positions (T,); the context holds what came before.

        Returns logits (B, T, vocab_size); with `logits_at` (B, len(logits_at), vocab_size): all a
        sampler needs, and far smaller than a prompt's logits.
        """
        x = self.tok_embeddings(tokens)
        cos, sin = rope_tables(positions, self.args.head_dim, self.args.rope_theta, x.dtype)
        context = context if context is not None else NoCache()
        for layer in self.layers:
            x = layer(x, cos, sin, context)
        if logits_at is not None:
            x = x[:, logits_at]
        return self.output(self.norm(x))
