"""`fast`'s timed kernel choices are measured once per machine, model and setting, and reused by every
later start: two starts run the same kernels, and the second times nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from penstock.config import DeploymentConfig
from penstock.engine.kernels import kernel_choice
from penstock.engine.kernels.calibration import KernelMemory, file_digest
from penstock.engine.kernels.kernel_choice import (
    DENSE_DTYPES,
    KV_DTYPES,
    AttentionChoice,
    WeightChoice,
    choose_attention,
    choose_weight_kernels,
)
from penstock.engine.model import Transformer
from penstock.engine.served import kernel_memory
from tests.engine.kernels.test_kernel_choice import TINY


def never_timed(*_: object) -> float:
    raise AssertionError("a stored choice must not be timed again")


def test_an_attention_choice_is_measured_once_then_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kernels" / "model.json"
    first = KernelMemory(path)
    measured = choose_attention(TINY, KV_DTYPES, (False, True), first)
    assert first.sources == {"attention": "measured"}
    assert json.loads(path.read_text()) == {"attention": measured.to_json()}
    monkeypatch.setattr(kernel_choice, "_step_seconds", never_timed)
    second = KernelMemory(path)  # the next start
    assert choose_attention(TINY, KV_DTYPES, (False, True), second) == measured
    assert second.sources == {"attention": "stored"}


def test_a_stored_choice_outside_the_candidates_is_measured_again(tmp_path: Path) -> None:
    memory = KernelMemory(tmp_path / "model.json")
    memory.keep("attention", AttentionChoice(torch.float16, False).to_json())
    choice = choose_attention(TINY, KV_DTYPES, (False, True), KernelMemory(memory.path))
    assert choice.kv_dtype in KV_DTYPES


def test_weight_kernels_are_measured_once_then_applied_as_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.json"
    first_model, second_model = Transformer(TINY).eval(), Transformer(TINY).eval()
    measured = choose_weight_kernels(first_model, DENSE_DTYPES, KernelMemory(path))
    monkeypatch.setattr(kernel_choice, "_dense_seconds", never_timed)
    monkeypatch.setattr(kernel_choice, "_crossover", never_timed)
    memory = KernelMemory(path)
    assert choose_weight_kernels(second_model, DENSE_DTYPES, memory) == measured
    assert memory.sources == {"weights": "stored"}
    layers = [(type(m).__name__, getattr(m, "few_rows", None)) for m in second_model.modules()]
    assert layers == [(type(m).__name__, getattr(m, "few_rows", None)) for m in first_model.modules()]


def test_remeasure_ignores_what_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    KernelMemory(path).keep("weights", WeightChoice(torch.bfloat16, {"64x64": 3}, True).to_json())
    assert KernelMemory(path).recall("weights") is not None
    assert KernelMemory(path, remeasure=True).recall("weights") is None


def test_an_unreadable_or_unwritable_store_only_costs_a_measurement(tmp_path: Path) -> None:
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    assert KernelMemory(garbled).recall("attention") is None
    blocked = tmp_path / "file"
    blocked.write_text("")
    memory = KernelMemory(blocked / "kernels" / "model.json")  # its folder cannot be made
    memory.keep("attention", AttentionChoice(torch.float32, True).to_json())
    assert memory.sources == {"attention": "measured"} and not memory.path.exists()


def test_the_store_is_named_by_machine_model_and_settings(tmp_path: Path, gguf_path: Path) -> None:
    fast = DeploymentConfig(name="a", determinism="fast")
    assert kernel_memory(DeploymentConfig(name="a"), gguf_path, tmp_path) is None  # batch_invariant: fixed
    assert kernel_memory(fast, gguf_path, None) is None  # no home: timed at each start, as before
    same = kernel_memory(fast, gguf_path, tmp_path), kernel_memory(fast, gguf_path, tmp_path)
    assert same[0] is not None and same[1] is not None and same[0].path == same[1].path
    assert same[0].path.parent == tmp_path / "kernels"
    other = kernel_memory(fast.model_copy(update={"weights": "int4-bf16"}), gguf_path, tmp_path)
    assert other is not None and other.path != same[0].path
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(gguf_path.read_bytes()[:4096])
    assert file_digest(copy) != file_digest(gguf_path)
