"""Embedding batches sorted and sliced by length, and queries on a lane of their own (audit finding 7)."""

from __future__ import annotations

import asyncio
import math

import pytest

from penstock.config import Settings
from penstock.engine.locator import locate_embedding_model
from penstock.retrieval.embedder import BATCH_TOKENS, Embedder, length_slices


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(locate_embedding_model(Settings().embedding_model_path), "minilm", dtype="float32")


def padded(slices: list[list[int]], lengths: list[int]) -> int:
    return sum(len(s) * max(lengths[i] for i in s) for s in slices)


def test_one_long_text_no_longer_pads_every_short_one() -> None:
    lengths = [3] * 255 + [252]  # the audit's request: 255 one-token texts and one of 252 tokens
    slices = length_slices(lengths, BATCH_TOKENS)
    assert sorted(i for s in slices for i in s) == list(range(256))
    assert padded(slices, lengths) == sum(lengths)  # was 256 x 252 = 64,512 padded in one batch
    mixed = [(7 * i) % 250 + 3 for i in range(512)]
    slices = length_slices(mixed, BATCH_TOKENS)
    assert all(len(s) * max(mixed[i] for i in s) <= BATCH_TOKENS for s in slices)
    assert padded(slices, mixed) <= 2 * sum(mixed)


async def test_sorted_slices_give_each_text_the_vector_it_gets_alone(embedder: Embedder) -> None:
    texts = ["short", "a much longer sentence about the backups that run every night " * 6, "mid length text here"]
    together = await embedder.embed(texts)
    alone = [(await embedder.embed([text]))[0] for text in texts]
    for a, b in zip(together, alone, strict=True):
        assert math.isclose(sum(x * y for x, y in zip(a, b, strict=True)), 1.0, abs_tol=1e-4)


async def test_a_query_is_not_held_up_by_a_bulk_batch(embedder: Embedder) -> None:
    await embedder.embed(["warm up"])
    bulk = asyncio.ensure_future(embedder.embed([f"passage {i} " + "word " * 240 for i in range(48)]))
    query = asyncio.ensure_future(embedder.embed_query(embedder.query("when do backups run?")))
    done, _ = await asyncio.wait({bulk, query}, return_when=asyncio.FIRST_COMPLETED)
    assert query in done and not bulk.done()
    assert len(await bulk) == 48


def test_a_query_is_cut_to_the_models_window(embedder: Embedder) -> None:
    text = "backups " * 2_000 + "the end"
    query = embedder.query(text)
    assert len(query.ids) == embedder.max_tokens and text.startswith(query.text) and len(query.text) < 4_000
    assert embedder.query(query.text).ids == query.ids  # the cut text reads as the same tokens
    assert embedder.query("when?").text == "when?"
