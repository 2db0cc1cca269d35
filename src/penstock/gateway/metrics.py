"""GET /metrics: Prometheus text format, from the engines' registry and the app's own."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from penstock.gateway.services import Services, services

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(svc: Services = Depends(services)) -> Response:
    svc.usage.observe_pending()  # a scrape counts every request settled before it
    if svc.http_metrics is not None:
        svc.http_metrics.observe_pending()  # and every exchange answered before it
    return Response(b"".join(map(generate_latest, svc.registries)), media_type=CONTENT_TYPE_LATEST)
