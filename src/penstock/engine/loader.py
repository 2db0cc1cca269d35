"""Load a chat model, GGUF file or Hugging Face folder, into a ready `Transformer`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from penstock.engine.chat_template import ChatTemplate
from penstock.engine.checkpoint import Checkpoint, Grid, concat_grids
from penstock.engine.gguf_loader import read_gguf
from penstock.engine.kernels.calibration import KernelMemory
from penstock.engine.kernels.kernel_choice import DENSE_DTYPES, choose_weight_kernels
from penstock.engine.kernels.quant import quantize_layers
from penstock.engine.model import ModelArgs, Transformer, fuse_projections
from penstock.engine.safetensors_loader import hf_chat_template, hf_model_args, hf_tokenizer, read_hf_folder, read_json
from penstock.engine.tokenizer import Tokenizer
from penstock.errors import ConfigError

# on: int4 few-row kernels, untimed; measure: int4 few-row kernels and a bf16 dense copy for many-row
# calls, each where it times faster on this CPU (kernel_choice)
Quantize = Literal["off", "on", "measure"]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    args: ModelArgs
    model: Transformer
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    grids: dict[str, Grid] = field(default_factory=dict, repr=False)  # exact quantized forms, fused as the model is

    @property
    def device(self) -> torch.device:
        return self.model.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.tok_embeddings.weight.dtype


def load_chat_model(
    path: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    quantize: Quantize = "off",
    memory: KernelMemory | None = None,
) -> LoadedModel:
    """The model ready to run; `quantize` adds weight-only quantized kernels for few-row calls (CPU only),
    `measure` as `memory` holds them from an earlier start where it does."""
    if path.is_file() and path.suffix == ".gguf":
        checkpoint, name = read_gguf(path, dtype=dtype), path.stem
    elif path.is_dir():
        checkpoint, name = read_hf_folder(path, dtype=dtype), path.name
    else:
        raise ConfigError(f"{path} is neither a .gguf file nor a Hugging Face model folder")
    model = build_transformer(checkpoint, device)
    if torch.device(device).type == "cpu":
        if quantize == "on":
            quantize_layers(model)
        elif quantize == "measure":
            choose_weight_kernels(model, DENSE_DTYPES, memory)
    grids = fuse_projections(checkpoint.grids, checkpoint.args.n_layers, concat_grids)
    return LoadedModel(name, checkpoint.args, model, checkpoint.tokenizer, checkpoint.chat_template, grids)


def read_prompt_side(path: Path) -> Checkpoint:
    """A checkpoint's shape, tokenizer and chat template without its weights: what a deployment served
    elsewhere counts its tokens with."""
    if path.is_file() and path.suffix == ".gguf":
        return read_gguf(path, weights=False)
    if path.is_dir():
        args = hf_model_args(read_json(path / "config.json"), path)
        template = hf_chat_template(path)
        return Checkpoint(args, {}, hf_tokenizer(path, template.source), template)
    raise ConfigError(f"{path} is neither a .gguf file nor a Hugging Face model folder")


def build_transformer(checkpoint: Checkpoint, device: torch.device | str) -> Transformer:
    """A Transformer holding the checkpoint's weights, in eval mode, on `device`."""
    # Built on the meta device so no memory goes to random weights that are replaced at once.
    with torch.device("meta"):
        model = Transformer(checkpoint.args)
    fused = fuse_projections(checkpoint.state_dict, checkpoint.args.n_layers)
    weights = {name: w.to(device) for name, w in fused.items()}
    result = model.load_state_dict(weights, strict=False, assign=True)
    if checkpoint.args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    missing = [k for k in result.missing_keys if not (checkpoint.args.tie_embeddings and k == "output.weight")]
    if missing or result.unexpected_keys:
        raise ConfigError(f"checkpoint does not fit the model: missing {missing}, unexpected {result.unexpected_keys}")
    return model.eval()
