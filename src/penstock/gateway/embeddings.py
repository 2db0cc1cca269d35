"""POST /v1/embeddings: OpenAI's embeddings API over the bundled MiniLM (or any sentence-transformers folder).

Validated before any model work: the model name and the key's scopes, text input only (token arrays
belong to another model's tokenizer), at most MAX_INPUTS texts, each within the model's window, and
at most `policy.max_embedding_tokens` tokens in all.
Admitted like a completion, with the input tokens reserved, and recorded in the ledger.
"""

from __future__ import annotations

import base64
import struct

from fastapi import APIRouter, Depends, Request, Response

from penstock.errors import InvalidRequest, ModelNotFound
from penstock.gateway.chat import ERRORS, caller
from penstock.gateway.json_body import StrictJsonRoute
from penstock.gateway.schemas import EmbeddingList, EmbeddingOut, EmbeddingRequest, EmbeddingUsage
from penstock.gateway.services import Services, services
from penstock.observability.timing import StageTimer
from penstock.router.scopes import check_scopes
from penstock.types import Caller

router = APIRouter(route_class=StrictJsonRoute)
MAX_INPUTS = 2048  # OpenAI's cap per request
ROUTE = "embeddings"


@router.post("/v1/embeddings", response_model=EmbeddingList, responses=ERRORS)
async def embeddings(
    body: EmbeddingRequest,
    request: Request,
    response: Response,
    who: Caller = Depends(caller),
    svc: Services = Depends(services),
) -> EmbeddingList:
    timer, request_id = StageTimer(), request.state.request_id
    with svc.settlement.refusals(request_id, who, ROUTE, body.model):
        with timer.stage("gateway"):
            texts, counts = _validated(body, who, svc)
        with timer.stage("admission"):
            ticket = await svc.admission.admit(who, request_id, sum(counts))
    response.headers.update(ticket.headers)
    status = "error"
    try:
        with timer.stage("embed"):
            vectors = await svc.embedder.embed(texts)
        status = "ok"
    finally:
        svc.admission.release(ticket, sum(counts))
        svc.settlement.embedded(request_id, who, body.model, sum(counts) if status == "ok" else 0, timer, status)
    data = [EmbeddingOut(index=i, embedding=_encoded(v, body.encoding_format)) for i, v in enumerate(vectors)]
    return EmbeddingList(
        data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=sum(counts), total_tokens=sum(counts))
    )


def _validated(body: EmbeddingRequest, who: Caller, svc: Services) -> tuple[list[str], list[int]]:
    embedder = svc.embedder
    if body.model != embedder.name:
        raise ModelNotFound(f"The model '{body.model}' does not exist (embeddings: '{embedder.name}')", param="model")
    check_scopes(who, body.model, [])
    texts = body.texts()
    if texts is None:
        raise InvalidRequest(
            "input must be a string or a list of strings; token arrays are not supported", param="input"
        )
    if not texts or len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"input must hold 1 to {MAX_INPUTS} texts, not {len(texts)}", param="input")
    if any(not text for text in texts):
        raise InvalidRequest("input texts must not be empty", param="input")
    if body.dimensions is not None and body.dimensions != embedder.dimensions:
        raise InvalidRequest(f"this model's embeddings have {embedder.dimensions} dimensions", param="dimensions")
    counts = embedder.count_tokens(texts)
    too_long = [i for i, n in enumerate(counts) if n > embedder.max_tokens]
    if too_long:
        raise InvalidRequest(
            f"input {too_long[0]} has {counts[too_long[0]]} tokens; this model takes at most {embedder.max_tokens}",
            param="input",
        )
    if sum(counts) > svc.policy.max_embedding_tokens:
        raise InvalidRequest(
            f"input holds {sum(counts)} tokens; one request takes at most {svc.policy.max_embedding_tokens},"
            " so send it in several",
            param="input",
        )
    return texts, counts


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
