"""Liveness (the process answers) and readiness (models loaded, dependencies reachable)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from penstock.gateway.services import Services, services

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(svc: Services = Depends(services)) -> JSONResponse:
    names = list(svc.checks)
    results = await asyncio.gather(*(svc.checks[name]() for name in names))
    checks = {"models": bool(svc.router.models), **dict(zip(names, results, strict=True))}
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )
