"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from penstock.errors import ModelNotFound
from penstock.gateway.chat import ERRORS, caller
from penstock.gateway.schemas import ModelCard, ModelList
from penstock.gateway.services import Services, services

router = APIRouter(dependencies=[Depends(caller)])


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(svc: Services = Depends(services)) -> ModelList:
    return ModelList(data=[ModelCard(id=name, created=svc.created) for name in svc.models])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
async def get_model(model_id: str, svc: Services = Depends(services)) -> ModelCard:
    if model_id not in svc.models:
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
    return ModelCard(id=model_id, created=svc.created)
