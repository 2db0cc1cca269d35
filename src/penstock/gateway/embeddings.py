"""POST /v1/embeddings: OpenAI's embeddings API over the bundled MiniLM (or any sentence-transformers folder),
or a remote deployment's upstream (router/embedding_models.py).

Validated before any model work: the model name and the key's scopes, text input only (token arrays
belong to another model's tokenizer), at most MAX_INPUTS texts, each within the model's window, and
at most `policy.max_embedding_tokens` tokens in all.
Admitted like a completion, with the input tokens reserved, and recorded in the ledger.
"""

from __future__ import annotations

import base64
import struct

from fastapi import APIRouter, Depends, Request, Response

from penstock.errors import InvalidRequest, PenstockError
from penstock.gateway.chat import ERRORS, caller
from penstock.gateway.json_body import StrictJsonRoute
from penstock.gateway.schemas import EmbeddingList, EmbeddingOut, EmbeddingRequest, EmbeddingUsage
from penstock.gateway.services import Services, services
from penstock.observability.timing import StageTimer
from penstock.router.embedding_models import EmbeddingModel
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
            model = svc.embedding_models.get(body.model)
            texts, counts = _validated(body, who, model, svc)
        with timer.stage("admission"):
            ticket = await svc.admission.admit(who, request_id, sum(counts))
    response.headers.update(ticket.headers)
    status, tokens = "error", 0
    try:
        with timer.stage("embed"):
            embedded = await model.embed(texts, body.dimensions)
        status, tokens = "ok", embedded.prompt_tokens if embedded.prompt_tokens is not None else sum(counts)
    except PenstockError as exc:
        status = exc.code or exc.type
        raise
    finally:
        svc.admission.release(ticket, tokens)
        svc.settlement.embedded(request_id, who, body.model, tokens, timer, status)
    vectors = embedded.vectors
    data = [EmbeddingOut(index=i, embedding=_encoded(v, body.encoding_format)) for i, v in enumerate(vectors)]
    return EmbeddingList(data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


def _validated(
    body: EmbeddingRequest, who: Caller, model: EmbeddingModel, svc: Services
) -> tuple[list[str], list[int]]:
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
    if body.dimensions is not None and model.dimensions is not None and body.dimensions != model.dimensions:
        raise InvalidRequest(f"this model's embeddings have {model.dimensions} dimensions", param="dimensions")
    counts = model.count_tokens(texts)
    too_long = [i for i, n in enumerate(counts) if n > model.max_tokens]
    if too_long:
        raise InvalidRequest(
            f"input {too_long[0]} has {counts[too_long[0]]} tokens; this model takes at most {model.max_tokens}",
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
