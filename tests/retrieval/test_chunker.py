from itertools import pairwise
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from penstock.engine.locator import locate_embedding_model
from penstock.retrieval.chunker import Chunker, ChunkingConfig
from penstock.retrieval.parsers import Section


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(Path(locate_embedding_model(None)) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def test_chunks_fit_the_budget_counted_by_the_embedding_tokenizer(tokenizer: Tokenizer) -> None:
    text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(300))
    chunks = Chunker(tokenizer, ChunkingConfig(max_tokens=64, overlap_tokens=8)).chunks([Section("Guide", text)])
    assert len(chunks) > 10
    for chunk in chunks:
        assert chunk.tokens <= 64
        assert chunk.tokens == len(tokenizer.encode(chunk.embedded_text, add_special_tokens=False).ids)
        assert chunk.heading == "Guide" and chunk.embedded_text.startswith("Guide\n")
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_neighbouring_chunks_overlap_and_nothing_is_lost(tokenizer: Tokenizer) -> None:
    sentences = [f"Fact {i} is recorded here." for i in range(80)]
    chunks = Chunker(tokenizer, ChunkingConfig(max_tokens=48, overlap_tokens=10)).chunks(
        [Section("", " ".join(sentences))]
    )
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in sentences)
    for before, after in pairwise(chunks):
        assert after.text.split()[0] in before.text  # the next chunk opens with the previous one's tail


def test_chunks_never_span_sections_and_a_giant_word_is_windowed(tokenizer: Tokenizer) -> None:
    sections = [Section("A", "alpha " * 5), Section("B", "x" * 3000)]
    chunks = Chunker(tokenizer, ChunkingConfig(max_tokens=32, overlap_tokens=4)).chunks(sections)
    assert chunks[0].heading == "A" and "alpha" in chunks[0].text
    assert {c.heading for c in chunks[1:]} == {"B"} and all(c.tokens <= 32 for c in chunks)
