from pathlib import Path

import torch
from torch import nn

from penstock.engine.gguf_loader import has_4bit_layers
from penstock.engine.quant import FEW_ROWS, GROUP, HybridInt4Linear, quantize_layers


def four_bit_linear(out_features: int = 64, in_features: int = 128) -> nn.Linear:
    """A linear layer whose weights lie on a Q4_1-style grid: per group of 32, q·scale + min, q in 0..15."""
    gen = torch.Generator().manual_seed(0)
    groups = in_features // GROUP
    q = torch.randint(0, 16, (out_features, groups, GROUP), generator=gen).float()
    q[..., 0], q[..., 1] = 0, 15  # each group spans the whole grid, as requantisation assumes
    scale = torch.rand(out_features, groups, 1, generator=gen) * 0.02 + 0.001
    low = torch.randn(out_features, groups, 1, generator=gen) * 0.05
    linear = nn.Linear(in_features, out_features, bias=False)
    linear.weight.data = (q * scale + low).view(out_features, in_features)
    return linear


def test_few_rows_use_int4_and_match_fp32_to_bf16_precision() -> None:
    linear = four_bit_linear()
    hybrid = HybridInt4Linear(linear)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    expected = linear(x)
    got = hybrid(x)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=0.02, atol=0.02)
    assert not torch.equal(got, expected)  # it really took the int4 path


def test_many_rows_use_the_exact_fp32_weights() -> None:
    linear = four_bit_linear()
    x = torch.randn(FEW_ROWS, 128, generator=torch.Generator().manual_seed(2))
    assert torch.equal(HybridInt4Linear(linear)(x), linear(x))


def test_quantize_layers_leaves_the_tied_head_alone() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.Module()
            self.attention.wq = four_bit_linear(64, 64)
            self.feed_forward = nn.Module()
            self.feed_forward.w1 = four_bit_linear(64, 64)
            self.feed_forward.odd = nn.Linear(33, 8)  # not a multiple of the group: stays fp32

    model = nn.Module()
    model.layers = nn.ModuleList([Block()])
    model.output = nn.Linear(64, 10)
    assert quantize_layers(model) == 2
    assert isinstance(model.layers[0].attention.wq, HybridInt4Linear)
    assert isinstance(model.layers[0].feed_forward.odd, nn.Linear)
    assert isinstance(model.output, nn.Linear)


def test_the_shipped_gguf_is_4bit(gguf_path: Path) -> None:
    assert has_4bit_layers(gguf_path)
