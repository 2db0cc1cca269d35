"""A tiny random Llama saved by transformers, loaded by us: same logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from penstock.engine.loader import LoadedModel, load_chat_model
from penstock.types import Message


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def tiny_llama(request: pytest.FixtureRequest, tmp_path: Path, loaded: LoadedModel) -> tuple[Path, Any]:
    """A Hugging Face folder: random weights, and SmolLM2's tokenizer and chat template."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=loaded.tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=500.0,
        rms_norm_eps=1e-5,
        initializer_range=0.3,  # large enough that attention and RoPE shape the logits
        tie_word_embeddings=request.param,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    loaded.tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer_config = {"chat_template": loaded.chat_template.source, "eos_token": "<|im_end|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return tmp_path, model


def test_logits_match_transformers(tiny_llama: tuple[Path, Any]) -> None:
    folder, reference = tiny_llama
    ours = load_chat_model(folder)
    assert ours.args.rope_theta == 500.0 and ours.args.n_kv_heads == 2
    assert ours.args.tie_embeddings == reference.config.tie_word_embeddings
    ids = torch.randint(0, ours.args.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(ours.model(ids, torch.arange(17)), reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_tokenizer_and_template_come_from_the_folder(tiny_llama: tuple[Path, Any], loaded: LoadedModel) -> None:
    ours = load_chat_model(tiny_llama[0])
    assert ours.tokenizer.eos_token_ids == (2,)
    assert ours.tokenizer.encode("<|im_start|>hi 123") == loaded.tokenizer.encode("<|im_start|>hi 123")
    messages = [Message("user", "hi")]
    assert ours.chat_template.render(messages) == loaded.chat_template.render(messages)
