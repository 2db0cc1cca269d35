"""Sentence embeddings from a sentence-transformers folder: transformer → mean pooling → L2 normalisation.

The model loads on first use (most requests never embed, and a start-up should not wait on it) and
runs on one thread of its own with one torch thread, so a batch of embeddings neither blocks the
event loop nor fights the engine for both cores. Token counts come from the tokenizer alone, on the
caller's thread, so a request is validated and rate-limited before any model work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer


class Embedder:
    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.max_tokens = int(_read(path / "sentence_bert_config.json").get("max_seq_length", 256))
        self.dimensions = int(_read(path / "config.json").get("hidden_size", 0))
        self._normalize = any(m.get("type", "").endswith("Normalize") for m in _read(path / "modules.json", []))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="penstock-embed")
        self._model: Any = None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens included, as the model will see them."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; texts longer than max_tokens are the caller's to refuse."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed, list(texts))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> list[list[float]]:
        model = self._loaded()
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = torch.zeros(len(texts), width, dtype=torch.long)
        mask = torch.zeros(len(texts), width, dtype=torch.long)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
            mask[row, : len(encoding.ids)] = 1
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        vectors = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self._normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.tolist()

    def _loaded(self) -> Any:
        if self._model is None:
            from transformers import AutoModel  # heavy; only a process that embeds pays for it

            torch.set_num_threads(1)  # this thread's pool; the engine keeps its own
            self._model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        return self._model


def _read(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.exists() else ({} if default is None else default)
