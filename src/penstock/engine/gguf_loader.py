"""Read a llama-architecture GGUF: model shape, dequantised weights, tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor, TokenType
from gguf.quants import dequantize

from penstock.engine.chat_template import ChatTemplate
from penstock.engine.checkpoint import Checkpoint, Grid
from penstock.engine.model import ModelArgs
from penstock.engine.tokenizer import ByteLevelVocab, Tokenizer, build_byte_level_bpe, stop_token_ids
from penstock.errors import ConfigError

ARCHITECTURES = ("llama",)

GLOBAL_TENSORS = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}

# Names after "blk.N." in the file, and after "layers.N." in `Transformer`.
BLOCK_TENSORS = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
}

# Bytes per block of 32 weights: an fp16 scale (and Q4_1's fp16 minimum), then the 4- or 8-bit values.
GRID_BLOCK_BYTES = {GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20, GGMLQuantizationType.Q8_0: 34}

_REQUIRED = object()


class GGUFMetadata:
    """Typed access to a GGUF's key-value metadata."""

    def __init__(self, reader: GGUFReader, path: Path) -> None:
        self._reader = reader
        self._path = path

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        field = self._reader.get_field(key)
        if field is not None:
            return field.contents()
        if default is _REQUIRED:
            raise ConfigError(f"{self._path}: GGUF metadata has no {key!r}")
        return default

    def count(self, key: str) -> int:
        """Length of an array field, without decoding its items."""
        field = self._reader.get_field(key)
        return len(field.data) if field is not None else 0


def has_4bit_layers(path: Path) -> bool:
    """Whether the file's attention weights are Q4_0/Q4_1 (groups of 32), which int4 kernels hold as is."""
    reader = GGUFReader(path)
    kinds = {t.tensor_type for t in reader.tensors if t.name.endswith("attn_q.weight")}
    return bool(kinds) and kinds <= {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1}


def read_gguf(path: Path, *, dtype: torch.dtype = torch.float32, weights: bool = True) -> Checkpoint:
    """The checkpoint; `weights=False` reads the shape, tokenizer and template alone (no tensors)."""
    reader = GGUFReader(path)
    meta = GGUFMetadata(reader, path)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"{path}: GGUF architecture {arch!r} is not supported; supported: {ARCHITECTURES}")
    args = model_args(meta, arch, has_output=any(t.name == "output.weight" for t in reader.tensors))
    template = chat_template(meta)
    tokenizer = gguf_tokenizer(meta, template.source)
    if not weights:
        return Checkpoint(args, {}, tokenizer, template)
    return Checkpoint(args, state_dict(reader.tensors, args, dtype), tokenizer, template, grids(reader.tensors, args))


def model_args(meta: GGUFMetadata, arch: str, *, has_output: bool) -> ModelArgs:
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none":
        raise ConfigError(f"RoPE scaling {scaling!r} is not supported yet")
    dim, n_heads = meta.get(f"{arch}.embedding_length"), meta.get(f"{arch}.attention.head_count")
    return ModelArgs(
        dim=dim,
        n_layers=meta.get(f"{arch}.block_count"),
        n_heads=n_heads,
        n_kv_heads=meta.get(f"{arch}.attention.head_count_kv", n_heads),
        hidden_dim=meta.get(f"{arch}.feed_forward_length"),
        vocab_size=meta.get(f"{arch}.vocab_size", meta.count("tokenizer.ggml.tokens")),
        norm_eps=meta.get(f"{arch}.attention.layer_norm_rms_epsilon"),
        rope_theta=meta.get(f"{arch}.rope.freq_base", 10000.0),
        max_seq_len=meta.get(f"{arch}.context_length"),
        tie_embeddings=not has_output,
        head_dim=meta.get(f"{arch}.attention.key_length", dim // n_heads),
    )


def state_dict(tensors: list[ReaderTensor], args: ModelArgs, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    weights = {}
    for tensor in tensors:
        name = parameter_name(tensor.name)
        weights[name] = in_model_rows(name, dequantised(tensor), args).to(dtype)
    return weights


def in_model_rows(name: str, weight: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """Q and K rows as the model's rotate-half RoPE reads them; every other weight as it is."""
    if name.endswith("attention.wq.weight"):
        return unpermute_rope_rows(weight, args.n_heads)
    if name.endswith("attention.wk.weight"):
        return unpermute_rope_rows(weight, args.n_kv_heads)
    return weight


def grids(tensors: list[ReaderTensor], args: ModelArgs) -> dict[str, Grid]:
    """The exact grids of the tensors stored as Q4_0, Q4_1 or Q8_0, under their parameter names."""
    found = {}
    for tensor in tensors:
        grid = exact_grid(tensor)
        if grid is not None:
            name = parameter_name(tensor.name)
            found[name] = grid.rows(lambda rows, name=name: in_model_rows(name, rows, args))
    return found


def exact_grid(tensor: ReaderTensor) -> Grid | None:
    """A Q4_0, Q4_1 or Q8_0 tensor's blocks as a Grid (what gguf's dequantize computes, w = q·d + m,
    Q4_0's m being -8·d); None for any other type."""
    kind = tensor.tensor_type
    if kind not in GRID_BLOCK_BYTES:
        return None
    rows, cols = (int(n) for n in reversed(tensor.shape))
    blocks = np.ascontiguousarray(tensor.data).reshape(-1, GRID_BLOCK_BYTES[kind])
    scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    if kind == GGMLQuantizationType.Q8_0:
        q, low = blocks[:, 2:].copy().view(np.int8), np.zeros_like(scale)
    else:
        has_low = kind == GGMLQuantizationType.Q4_1
        low = blocks[:, 2:4].copy().view(np.float16).astype(np.float32) if has_low else -8 * scale
        packed = blocks[:, 4:] if has_low else blocks[:, 2:]
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=1)  # low nibbles are elements 0-15
    groups = cols // 32
    return Grid(
        torch.from_numpy(np.ascontiguousarray(q).reshape(rows, cols)),
        torch.from_numpy(scale.reshape(rows, groups)),
        torch.from_numpy(low.reshape(rows, groups)),
        bits=8 if kind == GGMLQuantizationType.Q8_0 else 4,
    )


def parameter_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    prefix, _, rest = gguf_name.partition(".")
    layer, _, suffix = rest.partition(".")
    if prefix == "blk" and layer.isdigit() and suffix in BLOCK_TENSORS:
        return f"layers.{layer}.{BLOCK_TENSORS[suffix]}"
    raise ConfigError(f"GGUF tensor {gguf_name!r} has no place in a Llama model")


def dequantised(tensor: ReaderTensor) -> torch.Tensor:
    values = dequantize(tensor.data, tensor.tensor_type)
    # GGUF lists dimensions innermost first; numpy and torch list them outermost first.
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's interleaving of each head's Q/K rows, giving back the rotate-half layout."""
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def chat_template(meta: GGUFMetadata) -> ChatTemplate:
    tokens = meta.get("tokenizer.ggml.tokens")
    bos, eos = meta.get("tokenizer.ggml.bos_token_id", None), meta.get("tokenizer.ggml.eos_token_id", None)
    return ChatTemplate(
        meta.get("tokenizer.chat_template"),
        bos_token=tokens[bos] if bos is not None else "",
        eos_token=tokens[eos] if eos is not None else "",
    )


def gguf_tokenizer(meta: GGUFMetadata, template: str) -> Tokenizer:
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ConfigError(f"GGUF tokenizer {kind!r} is not supported; only byte-level BPE ('gpt2') is")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = ByteLevelVocab(
        tokens=tokens,
        token_types=meta.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens)),
        merges=meta.get("tokenizer.ggml.merges"),
        pre=meta.get("tokenizer.ggml.pre", "default"),
        bos_id=meta.get("tokenizer.ggml.bos_token_id", None),
        eos_id=meta.get("tokenizer.ggml.eos_token_id", None),
        add_bos=meta.get("tokenizer.ggml.add_bos_token", False),
    )
    backend = build_byte_level_bpe(vocab)
    eos = [vocab.eos_id] if vocab.eos_id is not None else []
    return Tokenizer(backend, bos_id=vocab.bos_id, eos_token_ids=stop_token_ids(eos, template, backend))
