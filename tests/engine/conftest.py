"""Session fixtures: the shipped chat model, loaded once by us and once by transformers as a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(scope="session")
def hf_tokenizer(gguf_path: Path) -> Any:
    import transformers  # imported late: offline_hub must be in place first

    return transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="session")
def hf_model(gguf_path: Path) -> Any:
    """transformers' Llama with the weights transformers itself dequantises from the same GGUF.

    Built from `load_gguf_checkpoint` rather than `from_pretrained(gguf_file=...)`, which insists on
    `accelerate` (not a Penstock dependency) and would do the same thing.
    """
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys  # tied to the embedding
    return model.eval()
