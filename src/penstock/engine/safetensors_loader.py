"""Read a Hugging Face Llama folder: config.json, *.safetensors, tokenizer.json and its chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer as Backend

from penstock.engine.chat_template import ChatTemplate
from penstock.engine.checkpoint import Checkpoint
from penstock.engine.model import ModelArgs
from penstock.engine.tokenizer import Tokenizer, stop_token_ids
from penstock.errors import ConfigError

MODEL_TYPES = ("llama", "mistral")

GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}

# Names after "model.layers.N." in the folder, and after "layers.N." in `Transformer`.
BLOCK_TENSORS = {
    "input_layernorm.weight": "attention_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_hf_folder(folder: Path, *, dtype: torch.dtype = torch.float32) -> Checkpoint:
    args = hf_model_args(read_json(folder / "config.json"), folder)
    template = hf_chat_template(folder)
    tokenizer = hf_tokenizer(folder, template.source)
    return Checkpoint(args, hf_state_dict(folder, args, dtype), tokenizer, template)


def hf_model_args(config: dict[str, Any], folder: Path) -> ModelArgs:
    if config.get("model_type") not in MODEL_TYPES:
        raise ConfigError(f"{folder}: model_type {config.get('model_type')!r} is not a supported Llama family")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ConfigError(f"{folder}: attention or MLP biases are not supported")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConfigError(f"{folder}: RoPE scaling {rope!r} is not supported yet")
    dim, n_heads = config["hidden_size"], config["num_attention_heads"]
    return ModelArgs(
        dim=dim,
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        hidden_dim=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        max_seq_len=config.get("max_position_embeddings", 2048),
        tie_embeddings=config.get("tie_word_embeddings", False),
        head_dim=config.get("head_dim") or dim // n_heads,
    )


def hf_state_dict(folder: Path, args: ModelArgs, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder}: no *.safetensors files")
    weights = {}
    for file in files:
        for hf_name, tensor in load_file(file).items():
            name = parameter_name(hf_name)
            if name is not None and not (args.tie_embeddings and name == "output.weight"):
                weights[name] = tensor.to(dtype)
    return weights


def parameter_name(hf_name: str) -> str | None:
    """Our name for a tensor, None for buffers some exports include (rotary inv_freq)."""
    if hf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[hf_name]
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in BLOCK_TENSORS:
        return f"layers.{parts[2]}.{BLOCK_TENSORS[parts[3]]}"
    raise ConfigError(f"tensor {hf_name!r} has no place in a Llama model")


def token_text(value: str | dict[str, Any] | None) -> str:
    """tokenizer_config.json spells a special token as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content", "")
    return value or ""


def hf_chat_template(folder: Path) -> ChatTemplate:
    config = read_json(folder / "tokenizer_config.json")
    source = config.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": ..., "template": ...}]
        source = next((t["template"] for t in source if t.get("name") == "default"), None)
    jinja_file = folder / "chat_template.jinja"
    if source is None and jinja_file.is_file():
        source = jinja_file.read_text()
    if source is None:
        raise ConfigError(f"{folder}: no chat template (tokenizer_config.json or chat_template.jinja)")
    bos, eos = token_text(config.get("bos_token")), token_text(config.get("eos_token"))
    return ChatTemplate(source, bos_token=bos, eos_token=eos)


def eos_ids(folder: Path, backend: Backend) -> list[int]:
    """eos ids from generation_config.json, else config.json, else tokenizer_config.json's eos_token."""
    for name in ("generation_config.json", "config.json"):
        value = read_json(folder / name).get("eos_token_id")
        if value is not None:
            return value if isinstance(value, list) else [value]
    token = token_text(read_json(folder / "tokenizer_config.json").get("eos_token"))
    token_id = backend.token_to_id(token) if token else None
    return [token_id] if token_id is not None else []


def hf_tokenizer(folder: Path, template: str) -> Tokenizer:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no tokenizer.json")
    backend = Backend.from_file(str(path))
    bos_id = read_json(folder / "config.json").get("bos_token_id")
    return Tokenizer(backend, bos_id=bos_id, eos_token_ids=stop_token_ids(eos_ids(folder, backend), template, backend))
