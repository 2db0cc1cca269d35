"""POST /v1/embeddings with the bundled MiniLM: shapes, meaning, batching and refusals."""

from __future__ import annotations

import base64
import struct

import httpx
import pytest

from penstock.config import DEFAULT_EMBEDDING_MODEL
from tests.gateway.test_errors import assert_openai_error

CAT, KITTEN, MARKET = "The cat sat on the mat.", "A kitten is sitting on a rug.", "The stock market fell sharply today."


async def embed(client: httpx.AsyncClient, texts: str | list[str], **extra: object) -> dict:
    response = await client.post("/v1/embeddings", json={"model": DEFAULT_EMBEDDING_MODEL, "input": texts, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_vectors_are_unit_length_and_carry_meaning(client: httpx.AsyncClient) -> None:
    body = await embed(client, [CAT, KITTEN, MARKET])
    assert body["object"] == "list" and body["model"] == DEFAULT_EMBEDDING_MODEL
    cat, kitten, market = (item["embedding"] for item in body["data"])
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert len(cat) == 384 and dot(cat, cat) == pytest.approx(1.0, abs=1e-4)
    assert dot(cat, kitten) > dot(cat, market) + 0.2
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 10


async def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(client: httpx.AsyncClient) -> None:
    alone = (await embed(client, CAT))["data"][0]["embedding"]
    batched = (await embed(client, [MARKET + " " + MARKET, CAT]))["data"][1]["embedding"]
    # Bit-equal in fp32; with bf16 weights (the default where the CPU has bf16 instructions) the
    # matmuls' blocking follows the batch's width, which moves components by up to about 1e-3.
    assert dot(alone, batched) > 0.9999
    assert max(abs(a - b) for a, b in zip(alone, batched, strict=True)) < 5e-3


async def test_base64_holds_the_same_floats(client: httpx.AsyncClient) -> None:
    floats = (await embed(client, CAT))["data"][0]["embedding"]
    packed = (await embed(client, CAT, encoding_format="base64"))["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(packed))
    assert max(abs(a - b) for a, b in zip(floats, decoded, strict=True)) < 1e-6


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"input": [[1, 2, 3]]}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": [""]}, 400, "input"),
        ({"input": "word " * 400}, 400, "input"),
        ({"input": ["word " * 250] * 300}, 400, "input"),  # 75,600 tokens in all, past the 65,536 a request takes
        ({"dimensions": 1536}, 400, "dimensions"),
        ({"model": "text-embedding-3-small"}, 404, "model"),
    ],
)
async def test_bad_embedding_requests_are_refused(
    client: httpx.AsyncClient, change: dict, status: int, param: str
) -> None:
    body = {"model": DEFAULT_EMBEDDING_MODEL, "input": CAT, **change}
    assert_openai_error(await client.post("/v1/embeddings", json=body), status, param=param)


async def test_one_long_input_among_short_ones_is_billed_what_it_costs(client: httpx.AsyncClient) -> None:
    """Audit finding 7: 255 one-token texts and one of 252 tokens ran as 256 x 252 padded tokens (12.5 s)."""
    texts = ["hi"] * 255 + ["word " * 250]
    body = await embed(client, texts)
    assert len(body["data"]) == 256 and body["usage"]["prompt_tokens"] == 255 * 3 + 252
    assert body["data"][0]["embedding"] == body["data"][254]["embedding"]
