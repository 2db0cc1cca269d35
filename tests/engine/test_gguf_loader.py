from __future__ import annotations

import numpy as np
import pytest
import torch

from penstock.engine.gguf_loader import parameter_name, unpermute_rope_rows
from penstock.engine.loader import LoadedModel
from penstock.errors import ConfigError


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, which the loader must undo."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@pytest.mark.parametrize("n_heads", [1, 3, 9])
def test_unpermute_undoes_llama_cpp(n_heads: int) -> None:
    hf = np.random.default_rng(0).standard_normal((n_heads * 8, 5)).astype(np.float32)
    gguf = torch.from_numpy(llama_cpp_permute(hf, n_heads))
    assert torch.equal(unpermute_rope_rows(gguf, n_heads), torch.from_numpy(hf))


def test_tensor_names() -> None:
    assert parameter_name("token_embd.weight") == "tok_embeddings.weight"
    assert parameter_name("blk.12.ffn_gate.weight") == "layers.12.feed_forward.w1.weight"
    with pytest.raises(ConfigError, match="rope_freqs"):
        parameter_name("rope_freqs.weight")


def test_smollm2_shape(loaded: LoadedModel) -> None:
    args = loaded.args
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.hidden_dim) == (576, 30, 9, 3, 1536)
    assert (args.vocab_size, args.max_seq_len, args.rope_theta, args.head_dim) == (49152, 8192, 100000.0, 64)
    assert args.tie_embeddings and loaded.model.output.weight is loaded.model.tok_embeddings.weight
