"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from penstock.errors import ModelNotFound
from penstock.gateway.chat import ERRORS, caller
from penstock.gateway.schemas import ModelCard, ModelList
from penstock.gateway.services import Services, services
from penstock.router.scopes import allowed_models
from penstock.types import Caller

router = APIRouter()


def served_models(svc: Services) -> tuple[str, ...]:
    """Chat deployments, then the embedding model (/v1/embeddings)."""
    return (*svc.router.models, svc.embedding_models.local.name)


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(who: Caller = Depends(caller), svc: Services = Depends(services)) -> ModelList:
    """The models the calling key may use."""
    names = allowed_models(who, served_models(svc))
    return ModelList(data=[ModelCard(id=name, created=svc.created) for name in names])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
async def get_model(model_id: str, who: Caller = Depends(caller), svc: Services = Depends(services)) -> ModelCard:
    if model_id not in allowed_models(who, served_models(svc)):
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
    return ModelCard(id=model_id, created=svc.created)
