"""GET /dashboard: the admin dashboard's page; GET /dashboard/data: its charts (every tenant's cost among
them), for the master key and platform admin keys only.

The page holds no data, so it is served to anyone: it asks for an admin key, keeps it in the
browser's sessionStorage and sends it with each poll of /dashboard/data, which checks it.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse

from penstock.errors import DependencyUnavailable
from penstock.gateway.admin import platform
from penstock.gateway.services import Services, services

PAGE = files("penstock.gateway") / "static" / "dashboard.html"
# The page carries an admin key: it may run its own inline code and call this server, nothing else.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}

router = APIRouter(prefix="/dashboard", include_in_schema=False)


@router.get("")
async def dashboard_page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers=PAGE_HEADERS)


@router.get("/data", dependencies=[Depends(platform)])
async def dashboard_data(svc: Services = Depends(services)) -> JSONResponse:
    if svc.dashboard is None:
        raise DependencyUnavailable("this app keeps no dashboard history")
    return JSONResponse(svc.dashboard.data(), headers={"Cache-Control": "no-store"})
