"""Sentence embeddings from a sentence-transformers folder: transformer → mean pooling → L2 normalisation.

The model loads on first use (most requests never embed, and a start-up should not wait on it) and
runs on two lanes, each a thread of its own with one torch thread, so embedding neither blocks the
event loop nor fights the engine for both cores: bulk work (/v1/embeddings, ingestion) on one, a
search's query on the other, so a large batch never holds up a chat request's retrieval. A batch
runs sorted by length, in slices of similar lengths of at most BATCH_TOKENS padded tokens: one long
text among short ones no longer pads them all to its length (255 one-token texts beside one of 252
tokens were 65,000 padded tokens, 12.5 s, +630 MB). Its dtype is chosen by timing: on a CPU with bf16
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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import structlog
import torch
from tokenizers import Tokenizer

from penstock.config import Settings
from penstock.engine.kernels.kernel_choice import median_seconds
from penstock.engine.locator import locate_embedding_model
from penstock.retrieval.bert import BertEncoder, load_bert
from penstock.retrieval.token_cache import TokenVectorCache

log = structlog.get_logger("penstock.retrieval")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
EmbeddingDtype = Literal["auto", "float32", "bfloat16"]
BATCH_TOKENS = 4096  # padded tokens in one forward pass
# Characters of a query tokenized: a token is rarely longer (a word past 100 characters is one [UNK]),
# and tokenizing a megabyte to keep its first 256 tokens would cost the loop tens of milliseconds.
QUERY_CHARS_PER_TOKEN = 32


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
        self._queries = ThreadPoolExecutor(max_workers=1, thread_name_prefix="penstock-embed-query")
        self._model: BertEncoder | None = None
        self._load_lock = threading.Lock()

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (no truncation, no padding): what chunk sizes are counted with."""
        return self._tokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens included, as the model will see them."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def query(self, text: str) -> Query:
        """A search's question as the model reads it: cut to the model's window (its closing token kept)."""
        text = text[: self.max_tokens * QUERY_CHARS_PER_TOKEN]
        encoding = self._tokenizer.encode(text)
        if len(encoding.ids) <= self.max_tokens:
            return Query(text, tuple(encoding.ids))
        kept = self.max_tokens - 1
        return Query(text[: encoding.offsets[kept - 1][1]], (*encoding.ids[:kept], encoding.ids[-1]))

    async def embed(self, texts: Sequence[str], keep_tokens: TokenVectorCache | None = None) -> list[list[float]]:
        """One vector per text, in order, on the bulk lane; texts longer than max_tokens are the caller's to
        refuse. `keep_tokens`: where to leave each text's token vectors too (ingestion, for the reranker)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed, list(texts), keep_tokens)

    async def embed_query(self, query: Query) -> list[float]:
        """A query's vector, on the query lane."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._queries, self._embed_ids, query.ids)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._queries.shutdown(wait=True)

    @torch.inference_mode()
    def token_vectors(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Each text's contextual token embeddings, unit length, special tokens left out (for MaxSim).
        Runs on the calling thread; texts are cut at max_tokens."""
        hidden, mask, special = self._forward(list(texts), truncate=True)
        return _token_vectors(hidden, mask, special)

    def _forward(self, texts: list[str], *, truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        encodings = self._tokenizer.encode_batch(texts)
        cut = self.max_tokens if truncate else None
        return self._forward_rows([(e.ids[:cut], e.special_tokens_mask[:cut]) for e in encodings])

    def _forward_rows(self, rows: list[tuple[Sequence[int], Sequence[int]]]) -> tuple[torch.Tensor, ...]:
        """(ids, special-token mask) rows, padded to the longest: hidden states, attention mask, special mask."""
        model = self._loaded()
        width = max(len(kept) for kept, _ in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        special = torch.zeros(len(rows), width, dtype=torch.bool)
        for row, (kept, specials) in enumerate(rows):
            ids[row, : len(kept)] = torch.tensor(kept)
            mask[row, : len(kept)] = 1
            special[row, : len(kept)] = torch.tensor(specials, dtype=torch.bool)
        return model(ids, mask).float(), mask, special

    @torch.inference_mode()
    def _embed(self, texts: list[str], keep_tokens: TokenVectorCache | None = None) -> list[list[float]]:
        encodings = self._tokenizer.encode_batch(texts)
        vectors: list[list[float]] = [[] for _ in texts]
        for indices in length_slices([len(e.ids) for e in encodings], BATCH_TOKENS):
            hidden, mask, special = self._forward_rows(
                [(encodings[i].ids, encodings[i].special_tokens_mask) for i in indices]
            )
            if keep_tokens is not None and hidden.shape[1] <= self.max_tokens:  # as token_vectors would see them
                for i, kept in zip(indices, _token_vectors(hidden, mask, special), strict=True):
                    keep_tokens.put(texts[i], kept)
            for i, vector in zip(indices, self._pooled(hidden, mask), strict=True):
                vectors[i] = vector
        return vectors

    @torch.inference_mode()
    def _embed_ids(self, ids: Sequence[int]) -> list[float]:
        hidden, mask, _ = self._forward_rows([(ids, [0] * len(ids))])
        return self._pooled(hidden, mask)[0]

    def _pooled(self, hidden: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
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


@dataclass(frozen=True, slots=True)
class Query:
    """A search's question cut to the embedding model's window: its text, and its token ids."""

    text: str
    ids: tuple[int, ...]


def length_slices(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices into `lengths`, sorted by length and sliced so that no slice pads past `max_tokens`
    tokens, nor a row to more than twice its length (rows of up to 8 tokens go together)."""
    slices: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        length, current = lengths[index], slices[-1] if slices else None
        if current and (len(current) + 1) * length <= max_tokens and length <= 2 * max(lengths[current[0]], 4):
            current.append(index)
        else:
            slices.append([index])
    return slices


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
    """bf16 where it is faster than fp32 both for a query (one short row) and for a batch of chunks. The
    query is timed first: on a CPU without bf16 arithmetic it loses there already (48 against 11 ms on this
    project's 2-core machine), and the batch's timing, 3 s a run in bf16 there, is skipped."""
    probes = {"query": torch.randint(1000, 2000, (1, 16)), "batch": torch.randint(1000, 2000, (8, 128))}
    bf16 = copy.deepcopy(model).to(torch.bfloat16)  # .to() converts in place: keep the fp32 weights
    timings: dict[tuple[str, str], float] = {}
    faster = True
    for name, ids in probes.items():
        for label, candidate in (("float32", model), ("bfloat16", bf16)):
            timings[name, label] = median_seconds(partial(candidate, ids, torch.ones_like(ids)), repeats=3)
        faster = timings[name, "bfloat16"] < timings[name, "float32"]
        if not faster:
            break
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
