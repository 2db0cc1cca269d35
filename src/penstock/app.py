"""Builds the FastAPI app from Settings: wires the stages together, and nothing else."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial

import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from penstock import __version__
from penstock.config import Settings
from penstock.context.builder import ContextBuilder
from penstock.engine.served import ServedModel, load_served_models
from penstock.gateway import chat, health, metrics, models
from penstock.gateway.auth import Authenticator
from penstock.gateway.body_limit import BodyLimitMiddleware
from penstock.gateway.error_handlers import install_error_handlers
from penstock.gateway.request_id import RequestIdMiddleware
from penstock.gateway.services import Check, Services
from penstock.observability.engine_metrics import EngineMetrics
from penstock.pipeline import Pipeline
from penstock.router.router import Router
from penstock.store.runtime import DatabaseRuntime

log = structlog.get_logger("penstock.app")


def build_app(
    settings: Settings,
    served: Mapping[str, ServedModel] | None = None,
    registry: CollectorRegistry | None = None,
    *,
    with_database: bool = True,
) -> FastAPI:
    """The service. `served` (with the `registry` its engines report to) shares models already loaded,
    as tests do; `with_database=False` is the engine worker, which keeps no state of its own."""
    registry = registry or CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = (
            served if served is not None else load_served_models(settings.deployments, partial(EngineMetrics, registry))
        )
        try:
            async with _readiness_checks(settings, with_database) as checks:
                app.state.services = _services(settings, loaded, checks, registry)
                log.info("ready", models=list(loaded), auth="master key" if settings.admin_key else "open")
                yield
        finally:
            if served is None:  # only what this app loaded is this app's to release
                for model in loaded.values():
                    model.close()

    app = FastAPI(title="Penstock", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.policy.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    for module in (chat, models, health, metrics):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def _readiness_checks(settings: Settings, with_database: bool) -> AsyncIterator[dict[str, Check]]:
    if not with_database:
        yield {}
        return
    async with DatabaseRuntime(settings.database_url, settings.data_dir) as database:
        yield {"database": database.ping}


def _services(
    settings: Settings, models: Mapping[str, ServedModel], checks: dict[str, Check], registry: CollectorRegistry
) -> Services:
    router = Router(models)
    pipeline = Pipeline(router, ContextBuilder(settings.policy.default_max_tokens), models)
    return Services(
        auth=Authenticator(settings.admin_key),
        policy=settings.policy,
        pipeline=pipeline,
        models=router.models,
        created=int(time.time()),
        checks=checks,
        registry=registry,
    )
