"""The admin API for the control plane: /admin/deployments and /admin/routes. Platform admins only.

A write is checked against the configuration it would make, kept in PostgreSQL, applied by this replica
before it answers, and picked up by every other replica within a second (router/control.py). Remote
deployments only: an engine deployment loads its weights at start, from the config file.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from penstock.config import DeploymentConfig, RouteConfig
from penstock.errors import DependencyUnavailable, InvalidRequest
from penstock.gateway.admin import ADMIN_ERRORS, admin, platform
from penstock.gateway.json_body import StrictJsonRoute
from penstock.gateway.services import Services, services
from penstock.router.control import RouterControl
from penstock.store.router_objects import Kind

router = APIRouter(
    prefix="/admin",
    dependencies=[Depends(admin), Depends(platform)],
    responses=ADMIN_ERRORS,
    route_class=StrictJsonRoute,
)


class DeploymentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeploymentConfig]


class RouteList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RouteConfig]


def control(svc: Services = Depends(services)) -> RouterControl:
    if svc.control is None:
        raise DependencyUnavailable("this process keeps no configuration of its own (an engine worker)")
    return svc.control


@router.get("/deployments", response_model=DeploymentList)
async def list_deployments(plane: RouterControl = Depends(control)) -> DeploymentList:
    return DeploymentList(data=plane.effective()[0])


@router.put("/deployments/{name}", response_model=DeploymentConfig)
async def put_deployment(
    name: str, body: DeploymentConfig, plane: RouterControl = Depends(control)
) -> DeploymentConfig:
    await _write(plane, "deployment", name, body.name, body.model_dump(mode="json"))
    return body


@router.delete("/deployments/{name}", status_code=204)
async def delete_deployment(name: str, plane: RouterControl = Depends(control)) -> None:
    await plane.put("deployment", name, None)


@router.get("/routes", response_model=RouteList)
async def list_routes(plane: RouterControl = Depends(control)) -> RouteList:
    return RouteList(data=plane.effective()[1])


@router.put("/routes/{name}", response_model=RouteConfig)
async def put_route(name: str, body: RouteConfig, plane: RouterControl = Depends(control)) -> RouteConfig:
    await _write(plane, "route", name, body.name, body.model_dump(mode="json"))
    return body


@router.delete("/routes/{name}", status_code=204)
async def delete_route(name: str, plane: RouterControl = Depends(control)) -> None:
    await plane.put("route", name, None)


async def _write(plane: RouterControl, kind: Kind, name: str, named: str, body: dict[str, Any]) -> None:
    if named != name:
        raise InvalidRequest(f"the body names {named!r}, the path {name!r}", param="name")
    await plane.put(kind, name, body)
