from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from penstock.engine.gguf_loader import exact_grid, parameter_name, read_gguf, unpermute_rope_rows
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


@pytest.mark.parametrize("kind", [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0])
def test_an_exact_grid_gives_back_the_files_dequantized_weights_bit_for_bit(kind: GGMLQuantizationType) -> None:
    weights = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)
    blocks = quants.quantize(weights, kind)  # (rows, bytes per row), as a GGUF stores it
    tensor = SimpleNamespace(tensor_type=kind, shape=[64, 8], data=blocks)  # GGUF lists dimensions innermost first
    grid = exact_grid(tensor)  # type: ignore[arg-type]
    assert grid is not None and grid.bits == (8 if kind == GGMLQuantizationType.Q8_0 else 4)
    assert torch.equal(grid.dequantized(), torch.from_numpy(quants.dequantize(blocks, kind)))


def test_only_grid_types_have_an_exact_grid() -> None:
    tensor = SimpleNamespace(tensor_type=GGMLQuantizationType.F32, shape=[4], data=np.zeros(4, np.float32))
    assert exact_grid(tensor) is None  # type: ignore[arg-type]


def test_the_shipped_models_grids_are_its_weights(gguf_path: Path) -> None:
    checkpoint = read_gguf(gguf_path)
    assert len(checkpoint.grids) == 30 * 7 + 1  # every projection (Q4_1) and the tied embedding (Q8_0)
    for name in ("layers.0.attention.wq.weight", "layers.29.attention.wk.weight", "tok_embeddings.weight"):
        # Q and K rows are unpermuted in the grid as in the weight
        assert torch.equal(checkpoint.grids[name].dequantized(), checkpoint.state_dict[name])
