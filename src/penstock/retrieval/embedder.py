"""Sentence embeddings from a sentence-transformers folder: transformer → mean pooling → L2 normalisation.

The model loads on first use (most requests never embed, and a start-up should not wait on it) and
runs on one thread of its own with one torch thread, so a batch of embeddings neither blocks the
event loop nor fights the engine for both cores. Its dtype is chosen by timing: on a CPU with bf16
instructions bf16 weights embed twice as fast as fp32 (measured here: 33 vs 16 chunks/s on one
core, vectors within cosine 0.9998 of fp32's); on an AVX2-only CPU bf16 is the slower one.
Token counts come from the tokenizer alone, on the caller's thread, so a request is validated and
rate-limited before any model work.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Literal

import structlog
import torch
from tokenizers import Tokenizer

from penstock.config import Settings
from penstock.engine.kernel_choice import median_seconds
from penstock.engine.locator import locate_embedding_model
from penstock.retrieval.bert import BertEncoder, load_bert
from penstock.retrieval.token_cache import TokenVectorCache

log = structlog.get_logger("penstock.retrieval")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
EmbeddingDtype = Literal["auto", "float32", "bfloat16"]


class Embedder:
    def __init__(self, path: Path, name: str, threads: int = 1, dtype: EmbeddingDtype = "auto") -> None:
        """`threads`: torch threads per call; 1 beside a serving engine, all cores for bulk ingestion.
        `dtype`: the weights' dtype; "auto" times both on this CPU when the model loads."""
        self.path = path
        self.name = name
        self._threads = threads
        self._dtype = dtype
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.max_tokens = int(_read(path / "sentence_bert_config.json").get("max_seq_length", 256))
        self.dimensions = int(_read(path / "config.json").get("hidden_size", 0))
        self._normalize = any(m.get("type", "").endswith("Normalize") for m in _read(path / "modules.json", []))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="penstock-embed")
        self._model: BertEncoder | None = None
        self._load_lock = threading.Lock()

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (no truncation, no padding): what chunk sizes are counted with."""
        return self._tokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens included, as the model will see them."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    async def embed(self, texts: Sequence[str], keep_tokens: TokenVectorCache | None = None) -> list[list[float]]:
        """One vector per text, in order; texts longer than max_tokens are the caller's to refuse.
        `keep_tokens`: where to leave each text's token vectors too (ingestion, for the reranker)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed, list(texts), keep_tokens)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    @torch.inference_mode()
    def token_vectors(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Each text's contextual token embeddings, unit length, special tokens left out (for MaxSim).
        Runs on the calling thread; texts are cut at max_tokens."""
        hidden, mask, special = self._forward(list(texts), truncate=True)
        return _token_vectors(hidden, mask, special)

    def _forward(self, texts: list[str], *, truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self._loaded()
        encodings = self._tokenizer.encode_batch(texts)
        rows = [e.ids[: self.max_tokens] if truncate else e.ids for e in encodings]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(texts), width, dtype=torch.long)
        mask = torch.zeros(len(texts), width, dtype=torch.long)
        special = torch.zeros(len(texts), width, dtype=torch.bool)
        for row, (encoding, kept) in enumerate(zip(encodings, rows, strict=True)):
            ids[row, : len(kept)] = torch.tensor(kept)
            mask[row, : len(kept)] = 1
            special[row, : len(kept)] = torch.tensor(encoding.special_tokens_mask[: len(kept)], dtype=torch.bool)
        return model(ids, mask).float(), mask, special

    @torch.inference_mode()
    def _embed(self, texts: list[str], keep_tokens: TokenVectorCache | None = None) -> list[list[float]]:
        hidden, mask, special = self._forward(texts)
        if keep_tokens is not None and hidden.shape[1] <= self.max_tokens:  # as token_vectors would see them
            for text, vectors in zip(texts, _token_vectors(hidden, mask, special), strict=True):
                keep_tokens.put(text, vectors)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        vectors = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self._normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.tolist()

    def _loaded(self) -> BertEncoder:
        torch.set_num_threads(self._threads)  # this thread's pool (per thread under OpenMP); the engine keeps its own
        with self._load_lock:  # the embedding and the reranking threads share one model
            if self._model is None:
                model = load_bert(self.path)
                self._model = model.to(DTYPES[self._dtype] if self._dtype != "auto" else _fastest_dtype(model))
        return self._model


def _token_vectors(hidden: torch.Tensor, mask: torch.Tensor, special: torch.Tensor) -> list[torch.Tensor]:
    keep = mask.bool() & ~special
    vectors = torch.nn.functional.normalize(hidden, dim=-1)
    return [vectors[row][keep[row]] for row in range(hidden.shape[0])]


def configured_embedder(settings: Settings, threads: int = 1) -> Embedder:
    """The configured embedding model: the bundled all-MiniLM-L6-v2 unless a folder is named."""
    path = locate_embedding_model(settings.embedding_model_path)
    return Embedder(path, settings.embedding_model, threads, settings.embedding_dtype)


@torch.inference_mode()
def _fastest_dtype(model: BertEncoder) -> torch.dtype:
    """bf16 where it is faster than fp32 both for a query (one short row) and for a batch of chunks."""
    probes = {"query": torch.randint(1000, 2000, (1, 16)), "batch": torch.randint(1000, 2000, (8, 128))}
    bf16 = copy.deepcopy(model).to(torch.bfloat16)  # .to() converts in place: keep the fp32 weights
    timings = {
        (name, label): median_seconds(partial(candidate, ids, torch.ones_like(ids)), repeats=3)
        for name, ids in probes.items()
        for label, candidate in (("float32", model), ("bfloat16", bf16))
    }
    faster = all(timings[name, "bfloat16"] < timings[name, "float32"] for name in probes)
    chosen = "bfloat16" if faster else "float32"
    log.info(
        "kernel_choice",
        kind="embedding_dtype",
        **{f"{name}_{label}_ms": round(s * 1e3, 2) for (name, label), s in timings.items()},
        chosen=chosen,
    )
    return DTYPES[chosen]


def _read(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.exists() else ({} if default is None else default)
