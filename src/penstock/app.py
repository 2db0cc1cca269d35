"""Builds the FastAPI app from Settings: wires the stages together, and nothing else."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from penstock import __version__
from penstock.config import Settings
from penstock.context.builder import ContextBuilder
from penstock.engine.served import ServedModel, load_served_models
from penstock.gateway import chat, health, models
from penstock.gateway.auth import Authenticator
from penstock.gateway.body_limit import BodyLimitMiddleware
from penstock.gateway.error_handlers import install_error_handlers
from penstock.gateway.request_id import RequestIdMiddleware
from penstock.gateway.services import Check, Services
from penstock.pipeline import Pipeline
from penstock.router.router import Router
from penstock.store.runtime import DatabaseRuntime

log = structlog.get_logger("penstock.app")


def build_app(settings: Settings, served: Mapping[str, ServedModel] | None = None) -> FastAPI:
    """The service; `served` lets a caller share models already loaded (tests load them once)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = served if served is not None else load_served_models(settings.deployments)
        try:
            async with DatabaseRuntime(settings.database_url, settings.data_dir) as database:
                app.state.services = _services(settings, models, {"database": database.ping})
                log.info("ready", models=list(models), auth="master key" if settings.admin_key else "open")
                yield
        finally:
            if served is None:  # only what this app loaded is this app's to release
                for model in models.values():
                    model.close()

    app = FastAPI(title="Penstock", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.policy.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    for module in (chat, models, health):
        app.include_router(module.router)
    return app


def _services(settings: Settings, models: Mapping[str, ServedModel], checks: dict[str, Check]) -> Services:
    router = Router(models)
    pipeline = Pipeline(router, ContextBuilder(settings.policy.default_max_tokens), models)
    return Services(
        auth=Authenticator(settings.admin_key),
        policy=settings.policy,
        pipeline=pipeline,
        models=router.models,
        created=int(time.time()),
        checks=checks,
    )
