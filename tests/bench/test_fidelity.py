"""Fidelity to fp32: zero for the exact weights, small but real for the quantized and bf16 paths."""

from pathlib import Path

import pytest
import torch

from penstock.bench.fidelity import measure_fidelity
from penstock.engine.kernels.quant import FEW_ROWS, HybridLinear
from penstock.engine.loader import LoadedModel, load_chat_model


@pytest.fixture(scope="module")
def quantized(gguf_path: Path) -> LoadedModel:
    return load_chat_model(gguf_path, quantize="on")  # int4 below FEW_ROWS rows, the fp32 weight above


def hybrids(loaded: LoadedModel) -> list[HybridLinear]:
    return [m for m in loaded.model.modules() if isinstance(m, HybridLinear)]


def test_the_exact_route_matches_itself_and_the_quantized_one_is_close(quantized: LoadedModel) -> None:
    fidelity = measure_fidelity(quantized, ("exact", "few_rows", "dense"))
    assert fidelity["exact"].kl_divergence == pytest.approx(0, abs=1e-9) and fidelity["exact"].top1_agreement == 1
    assert fidelity["dense"] == fidelity["exact"]  # without a dense copy, many rows use the fp32 weight itself
    few = fidelity["few_rows"]
    assert 0 < few.kl_divergence < 0.01 and 0.95 < few.top1_agreement < 1
    assert all(layer.few_rows == FEW_ROWS and layer.dense is None for layer in hybrids(quantized))  # restored


def test_a_bf16_dense_copy_is_measured_on_the_dense_route(quantized: LoadedModel) -> None:
    for layer in hybrids(quantized):
        layer.use_dense(torch.bfloat16)
    try:
        dense = measure_fidelity(quantized, ("dense",))["dense"]
        assert 0 < dense.kl_divergence < 0.01 and 0.95 < dense.top1_agreement < 1
        assert all(layer.dense is not None for layer in hybrids(quantized))  # the copies are kept
    finally:
        for layer in hybrids(quantized):
            layer.use_dense(torch.float32)
