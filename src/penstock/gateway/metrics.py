"""GET /metrics: Prometheus text format, from the engines' registry and the app's own.

Its series are labelled by tenant (names, tokens, cost, quota refusals), so behind a master key it
needs a bearer token: the scrape token (`observability.metrics_token`), the master key or a platform
admin's key. An open server (loopback only) serves it to anyone, as it serves everything.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from penstock.gateway.services import Services, services

router = APIRouter()


async def scraper(authorization: str | None = Header(default=None), svc: Services = Depends(services)) -> None:
    svc.auth.authorize_scrape(authorization)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(scraper)])
async def metrics(svc: Services = Depends(services)) -> Response:
    svc.settlement.observe_pending()  # a scrape counts every request settled before it
    if svc.http_metrics is not None:
        svc.http_metrics.observe_pending()  # and every exchange answered before it
    return Response(b"".join(map(generate_latest, svc.registries)), media_type=CONTENT_TYPE_LATEST)
