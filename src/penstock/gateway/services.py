"""What the HTTP handlers are given: built once by the app, injected per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from prometheus_client import CollectorRegistry

from penstock.config import PolicyConfig, RetrievalConfig
from penstock.gateway.auth import Authenticator
from penstock.gateway.draining import Draining
from penstock.gateway.edge import HttpMetrics
from penstock.gateway.key_cache import KeyCache
from penstock.observability.dashboard import DashboardHistory
from penstock.observability.settlement import Settlement
from penstock.pipeline import Pipeline
from penstock.retrieval.ingest import Ingestor
from penstock.retrieval.retriever import Retriever
from penstock.router.admission import Admission
from penstock.router.control import RouterControl
from penstock.router.embedding_models import EmbeddingModels
from penstock.router.router import Router
from penstock.store.documents import DocumentStore
from penstock.store.feedback import FeedbackStore
from penstock.store.keys import KeyStore
from penstock.store.ledger import LedgerStore
from penstock.store.review import ReviewStore

Check = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class RetrievalServices:
    """Documents in, passages out; present only when the app has its database."""

    store: DocumentStore
    ingestor: Ingestor
    retriever: Retriever


@dataclass(frozen=True, slots=True)
class Services:
    auth: Authenticator
    policy: PolicyConfig
    retrieval_defaults: RetrievalConfig
    pipeline: Pipeline
    router: Router  # what clients may name: deployments and routes, as the control plane has them now
    created: int
    checks: dict[str, Check]  # readiness checks by name
    registries: tuple[CollectorRegistry, ...]  # the engines' (maybe shared), then this app's own
    admission: Admission  # the pipeline's, for the routes outside it (embeddings)
    settlement: Settlement
    embedding_models: EmbeddingModels  # what /v1/embeddings may name: the local embedder, remote deployments
    draining: Draining
    retrieval: RetrievalServices | None = None
    keys: KeyStore | None = None  # tenants and keys, for the admin API; None in an engine worker
    key_cache: KeyCache | None = None
    ledger: LedgerStore | None = None  # usage reports; None in an engine worker
    feedback: FeedbackStore | None = None
    reviews: ReviewStore | None = None  # the review sample, for admin keys
    dashboard: DashboardHistory | None = None  # the admin dashboard's recent charts
    http_metrics: HttpMetrics | None = None  # the edge's, None with metrics off
    control: RouterControl | None = None  # deployments and routes changed at run time; None in an engine worker


async def services(request: Request) -> Services:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request.
    return request.app.state.services
