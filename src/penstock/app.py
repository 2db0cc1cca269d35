"""Builds the FastAPI app from Settings: wires the stages together, and nothing else."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from penstock import __version__
from penstock.config import RetrievalConfig, Settings
from penstock.context.builder import ContextBuilder
from penstock.engine.served import ServedModel, load_served_models
from penstock.gateway import (
    admin,
    admin_routing,
    chat,
    collections,
    dashboard,
    embeddings,
    health,
    metrics,
    models,
    usage_api,
)
from penstock.gateway.auth import Authenticator
from penstock.gateway.draining import Draining
from penstock.gateway.edge import EdgeMiddleware, HttpMetrics
from penstock.gateway.error_handlers import install_error_handlers
from penstock.gateway.host_check import LoopbackHostMiddleware
from penstock.gateway.key_cache import KeyCache
from penstock.gateway.request_body import RequestBodyMiddleware
from penstock.gateway.services import Check, RetrievalServices, Services
from penstock.identity import Tenant
from penstock.observability.dashboard import DashboardHistory
from penstock.observability.engine_metrics import EngineMetrics
from penstock.observability.gateway_metrics import GatewayMetrics
from penstock.observability.ledger_writer import LedgerWriter
from penstock.observability.request_metrics import RequestMetrics
from penstock.observability.review import ReviewSampler
from penstock.observability.router_metrics import RouterCollector
from penstock.observability.settlement import Settlement
from penstock.observability.tracing import Tracing, tracer_provider
from penstock.pipeline import Pipeline
from penstock.retrieval.chunker import Chunker, ChunkingConfig
from penstock.retrieval.embedder import Embedder, configured_embedder
from penstock.retrieval.ingest import Ingestor
from penstock.retrieval.parser_process import ParseLimits, ParserProcess
from penstock.retrieval.query_cache import QueryEmbeddings
from penstock.retrieval.reranker import MaxSimReranker
from penstock.retrieval.retriever import Retriever, RetrieverConfig
from penstock.retrieval.token_cache import TokenVectorCache
from penstock.router.admission import Admission
from penstock.router.control import RouterControl
from penstock.router.embedding_models import EmbeddingModels
from penstock.router.fleet import Fleet
from penstock.router.ladder import Ladder
from penstock.router.limiter import RateLimiter
from penstock.router.limiter_local import LocalBackend
from penstock.router.limiter_redis import RedisBackend
from penstock.router.quotas import QuotaBook
from penstock.router.rate_limits import RATELIMIT_HEADERS
from penstock.router.router import Router
from penstock.router.shared_breakers import SharedBreakers
from penstock.store.documents import DocumentStore
from penstock.store.feedback import FeedbackStore
from penstock.store.keys import KeyStore
from penstock.store.ledger import LedgerStore
from penstock.store.ledger_spool import LedgerSpool
from penstock.store.redis import connect_redis
from penstock.store.review import ReviewStore
from penstock.store.router_objects import RouterObjectStore
from penstock.store.runtime import DatabaseRuntime

log = structlog.get_logger("penstock.app")


def build_app(
    settings: Settings,
    served: Mapping[str, ServedModel] | None = None,
    registry: CollectorRegistry | None = None,
    *,
    with_database: bool = True,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """The service. `served` (with the `registry` its engines report to) shares models already loaded,
    as tests do; `with_database=False` is the engine worker, which keeps no state of its own;
    `span_exporter` receives the traces (tests), else OTLP when configured, else none are made."""
    registry = registry or CollectorRegistry()
    draining = Draining()  # the server starts it on a shutdown signal (cli/serve.py)
    own_registry = CollectorRegistry()  # this app's gateway metrics; `registry` may be shared by several apps
    observe = settings.observability
    tracing = Tracing(tracer_provider(observe.tracing, span_exporter))
    http_metrics = HttpMetrics(own_registry) if observe.metrics else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = (
            served
            if served is not None
            else load_served_models(settings.deployments, partial(EngineMetrics, registry), settings.data_dir)
        )
        embedder = configured_embedder(settings)
        reranker = MaxSimReranker(embedder, TokenVectorCache(settings.retrieval.rerank_cache_mb * 2**20))
        parser = ParserProcess(_parse_limits(settings.retrieval))  # its worker starts with the first document
        try:
            async with (
                _state(settings, with_database) as state,
                _limiter(settings, own_registry) as limiter,
                Fleet.open(loaded) as fleet,
                _router_control(settings, fleet, state) as control,
                DashboardHistory((registry, own_registry), interval_s=observe.dashboard_interval_s) as history,
            ):
                retrieval = _retrieval(settings.retrieval, state.documents, embedder, reranker, parser)
                metrics = RequestMetrics(own_registry) if observe.metrics else None
                observers = _Observers(
                    (registry, own_registry), metrics, http_metrics, tracing, observe.request_logs, history
                )
                services = _services(settings, fleet, control, state, observers, limiter, embedder, draining, retrieval)
                own_registry.register(RouterCollector(fleet, services.pipeline.ladder))
                app.state.services = services
                log.info(
                    "ready", models=list(control.router.models), auth="master key" if settings.admin_key else "open"
                )
                # What start-up built lives as long as the server: frozen, the collector's full passes no
                # longer walk it. On this 2-core machine that cut a request's gateway CPU by 5-12%, most
                # where observability allocates (bench gateway: its cost fell from 15% to 9% of CPU).
                gc.freeze()
                yield
        finally:
            gc.unfreeze()  # collectable again once this app is gone (tests build many in one process)
            tracing.shutdown()  # exports what is buffered
            reranker.close()
            embedder.close()
            parser.close()
            if served is None:  # only what this app loaded is this app's to release
                for model in loaded.values():
                    model.close()

    app = FastAPI(title="Penstock", version=__version__, lifespan=lifespan)
    app.state.draining = draining
    install_error_handlers(app)
    policy = settings.policy
    app.add_middleware(RequestBodyMiddleware, max_bytes=policy.max_request_bytes, timeout_s=policy.body_timeout_s)
    if settings.admin_key is None:
        app.add_middleware(LoopbackHostMiddleware)
    if settings.policy.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.policy.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=[
                "x-request-id",
                "x-client-request-id",
                *(f"x-ratelimit-{h}" for h in RATELIMIT_HEADERS),
                "retry-after",
            ],
        )
    app.add_middleware(EdgeMiddleware, metrics=http_metrics, tracing=tracing)  # outermost
    for module in (chat, embeddings, models, collections, usage_api, admin, admin_routing, health, metrics, dashboard):
        app.include_router(module.router)
    return app


@dataclass(frozen=True, slots=True)
class _Observers:
    registries: tuple[CollectorRegistry, ...]  # the engines' (maybe shared), then this app's own
    requests: RequestMetrics | None
    http: HttpMetrics | None
    tracing: Tracing
    request_logs: bool
    dashboard: DashboardHistory


@dataclass(frozen=True, slots=True)
class _State:
    """What the app keeps between requests besides its models: nothing at all for an engine worker."""

    checks: dict[str, Check] = field(default_factory=dict)
    keys: KeyStore | None = None
    key_cache: KeyCache | None = None
    ledger: LedgerWriter | None = None
    quotas: QuotaBook | None = None
    documents: DocumentStore | None = None
    usage: LedgerStore | None = None
    feedback: FeedbackStore | None = None
    review: ReviewSampler | None = None
    reviews: ReviewStore | None = None
    router_objects: RouterObjectStore | None = None


@asynccontextmanager
async def _state(settings: Settings, with_database: bool) -> AsyncIterator[_State]:
    if not with_database:
        yield _State()
        return
    async with DatabaseRuntime(settings.database_url, settings.data_dir) as database:
        keys = KeyStore(database)
        for tenant in settings.tenants:
            await keys.ensure_tenant(Tenant(id=tenant.id, name=tenant.name, limits=tenant.limits))
        cache, ledger = KeyCache(keys), LedgerStore(database)
        writer = LedgerWriter(ledger, LedgerSpool(settings.data_dir / "spool" / "ledger.jsonl"))
        quotas = QuotaBook(ledger)
        await cache.start()
        await quotas.start()
        writer.start()
        reviews = ReviewStore(database)
        review = ReviewSampler(reviews, settings.observability.review_sample_rate)
        review.start()
        try:
            yield _State(
                {"database": database.ping},
                keys,
                cache,
                writer,
                quotas,
                DocumentStore(database),
                ledger,
                FeedbackStore(database),
                review,
                reviews,
                RouterObjectStore(database),
            )
        finally:
            await review.stop()
            await writer.stop()
            await quotas.stop()
            await cache.stop()


@asynccontextmanager
async def _limiter(settings: Settings, registry: CollectorRegistry) -> AsyncIterator[RateLimiter]:
    """Limits shared through Redis when REDIS_URL is set, else enforced in this process."""
    config, metrics = settings.rate_limits, GatewayMetrics(registry)
    local = LocalBackend(lease_s=config.concurrency_lease_s)
    if not settings.redis_url:
        yield RateLimiter(local, metrics)
        return
    client = connect_redis(settings.redis_url, timeout_s=config.redis_timeout_s)
    backend = RedisBackend(client, lease_s=config.concurrency_lease_s)
    fail_open = config.on_redis_error == "fail_open"
    limiter = RateLimiter(backend, metrics, fallback=local, fail_open=fail_open, replicas=config.replicas)
    try:
        yield limiter
        await limiter.drain()
    finally:
        await client.aclose()


@asynccontextmanager
async def _router_control(settings: Settings, fleet: Fleet, state: _State) -> AsyncIterator[RouterControl]:
    """The router, its deployments and routes from the config file and the admin API's store, kept current,
    and its breakers shared with the other gateway replicas through Redis when there is one."""
    router = Router((), (), fleet.load)
    control = RouterControl(settings.deployments, settings.routes, fleet, router, state.router_objects)
    await control.start()
    redis = (
        connect_redis(settings.redis_url, timeout_s=settings.rate_limits.redis_timeout_s)
        if settings.redis_url
        else None
    )
    shared = SharedBreakers(redis, fleet) if redis is not None else None
    if shared is not None:
        shared.start()
    try:
        yield control
    finally:
        if shared is not None and redis is not None:
            await shared.stop()
            await redis.aclose()
        await control.stop()


def _services(
    settings: Settings,
    fleet: Fleet,
    control: RouterControl,
    state: _State,
    observers: _Observers,
    limiter: RateLimiter,
    embedder: Embedder,
    draining: Draining,
    retrieval: RetrievalServices | None,
) -> Services:
    builder = ContextBuilder(settings.policy.default_max_tokens, settings.retrieval.max_per_source)
    ladder = Ladder(fleet.deployments, settings.router)
    retriever = retrieval.retriever if retrieval else None
    admission = Admission(limiter, state.quotas)
    settlement = Settlement(
        control.configs,
        state.ledger,
        state.quotas,
        observers.requests,
        observers.tracing,
        state.review,
        request_logs=observers.request_logs,
    )
    pipeline = Pipeline(control.router, builder, ladder, admission, settlement, control.configs, retriever)
    return Services(
        auth=Authenticator(settings.admin_key, state.key_cache, settings.observability.metrics_token),
        policy=settings.policy,
        retrieval_defaults=settings.retrieval,
        pipeline=pipeline,
        router=control.router,
        control=control if state.router_objects is not None else None,
        created=int(time.time()),
        checks=state.checks,
        registries=observers.registries,
        admission=admission,
        settlement=settlement,
        embedding_models=EmbeddingModels(embedder, fleet.deployments, ladder),
        keys=state.keys,
        key_cache=state.key_cache,
        ledger=state.usage,
        feedback=state.feedback,
        reviews=state.reviews,
        dashboard=observers.dashboard,
        http_metrics=observers.http,
        draining=draining,
        retrieval=retrieval,
    )


def _retrieval(
    config: RetrievalConfig,
    documents: DocumentStore | None,
    embedder: Embedder,
    reranker: MaxSimReranker,
    parser: ParserProcess,
) -> RetrievalServices | None:
    if documents is None:
        return None
    searches = RetrieverConfig(
        config.candidates, config.min_similarity, config.rerank_timeout_s, config.rerank_candidates
    )
    queries = QueryEmbeddings(embedder, config.query_cache_mb * 2**20)
    retriever = Retriever(documents, queries, reranker if config.rerank else None, searches)
    chunker = Chunker(embedder.tokenizer, ChunkingConfig(config.chunk_tokens, config.chunk_overlap_tokens))
    return RetrievalServices(documents, Ingestor(documents, embedder, chunker, reranker.cache, parser), retriever)


def _parse_limits(config: RetrievalConfig) -> ParseLimits:
    return ParseLimits(config.parse_timeout_s, config.max_pdf_pages, config.max_document_chars)
