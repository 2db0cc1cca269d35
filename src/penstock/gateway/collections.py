"""Collections: add, list and delete documents; search a collection on its own.

Writing documents is an operator's act: admin keys write to their own tenant, the master key to
any (`?tenant=`). Searching needs only a key whose scopes include the collection, and reads only
what the caller's tenant, user and groups may read.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from penstock.errors import DependencyUnavailable, InvalidRequest, NotFound, PermissionDenied
from penstock.gateway.chat import ERRORS, caller
from penstock.gateway.json_body import StrictJsonRoute
from penstock.gateway.principal import principal_of
from penstock.gateway.services import RetrievalServices, Services, services
from penstock.retrieval.ingest import IncomingDocument
from penstock.retrieval.parsers import Format, format_of
from penstock.router.scopes import check_collections, tenant_in_reach
from penstock.types import Acl, Caller

router = APIRouter(prefix="/v1/collections", responses=ERRORS, route_class=StrictJsonRoute)
NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class AclIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    groups: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)


class DocumentIn(BaseModel):
    """One document: text, or bytes in base64 (PDF); the format from `format` or the source's suffix."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=1024)
    text: str | None = None
    content_base64: str | None = None
    format: Format | None = None
    acl: AclIn = Field(default_factory=AclIn)

    def incoming(self) -> IncomingDocument:
        if (self.text is None) == (self.content_base64 is None):
            raise InvalidRequest("give a document's text or its content_base64, not both", param="documents")
        if self.text is not None:
            content = self.text.encode()
        else:
            try:
                content = base64.b64decode(self.content_base64 or "", validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidRequest("content_base64 is not valid base64", param="documents") from exc
        fmt = self.format or (format_of(self.source) if "." in self.source.rsplit("/", 1)[-1] else "txt")
        return IncomingDocument(self.source, content, fmt, Acl(tuple(self.acl.groups), tuple(self.acl.users)))


class DocumentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1, max_length=256)


class IngestedOut(BaseModel):
    source: str
    version: int
    status: Literal["created", "updated", "unchanged"]
    chunks: int


class DocumentOut(BaseModel):
    source: str
    version: int
    chunks: int
    acl: AclIn
    created_at: str


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4096)
    top_k: int = Field(default=8, ge=1, le=100)
    rerank: bool = True
    user: str | None = None  # the end user the search is for (ACL); see gateway.principal
    groups: list[str] | None = None


class SearchHit(BaseModel):
    chunk_id: int
    source: str
    version: int
    heading: str
    text: str
    score: float


class SearchOut(BaseModel):
    object: Literal["search_result"] = "search_result"
    status: Literal["ok", "empty", "failed"]
    degraded: list[str]
    data: list[SearchHit]
    timings_ms: dict[str, float]


def _writer_tenant(who: Caller, tenant: str | None) -> str:
    if not who.is_admin:
        raise PermissionDenied("adding or deleting documents needs an admin key or the master key")
    return tenant_in_reach(who, tenant) or who.tenant


def _retrieval(svc: Services) -> RetrievalServices:
    if svc.retrieval is None:
        raise DependencyUnavailable("retrieval needs the database, which this server runs without")
    return svc.retrieval


Collection = Path(pattern=NAME, description="The collection's name")


@router.post("/{collection}/documents", response_model=list[IngestedOut])
async def add_documents(
    body: DocumentsIn,
    collection: str = Collection,
    tenant: str | None = None,
    who: Caller = Depends(caller),
    svc: Services = Depends(services),
) -> list[IngestedOut]:
    """Add or replace documents; an unchanged one is skipped, a changed one becomes its next version."""
    owner, retrieval = _writer_tenant(who, tenant), _retrieval(svc)
    incoming = [d.incoming() for d in body.documents]  # every document checked before any is written
    results = [await retrieval.ingestor.ingest(owner, collection, doc) for doc in incoming]
    return [IngestedOut(source=r.source, version=r.version, status=r.status, chunks=r.chunks) for r in results]


@router.get("/{collection}/documents", response_model=list[DocumentOut])
async def list_documents(
    collection: str = Collection,
    tenant: str | None = None,
    who: Caller = Depends(caller),
    svc: Services = Depends(services),
) -> list[DocumentOut]:
    owner = _writer_tenant(who, tenant)
    documents = await _retrieval(svc).store.documents(owner, collection)
    return [
        DocumentOut(
            source=d.source,
            version=d.version,
            chunks=d.chunks,
            acl=AclIn(groups=list(d.acl.groups), users=list(d.acl.users)),
            created_at=d.created_at.isoformat(),
        )
        for d in documents
    ]


@router.delete("/{collection}/documents/{source:path}", status_code=204)
async def delete_document(
    source: str,
    collection: str = Collection,
    tenant: str | None = None,
    who: Caller = Depends(caller),
    svc: Services = Depends(services),
) -> None:
    """Gone from search at once: its chunks are deleted in the same transaction that retires it."""
    if not await _retrieval(svc).store.delete(_writer_tenant(who, tenant), collection, source):
        raise NotFound(f"no document '{source}' in collection '{collection}'", param="source")


@router.post("/{collection}/search", response_model=SearchOut)
async def search(
    body: SearchIn, collection: str = Collection, who: Caller = Depends(caller), svc: Services = Depends(services)
) -> SearchOut:
    """Retrieval alone: the passages a chat request would get, with scores and per-sub-stage timings."""
    check_collections(who, [collection])
    principal = principal_of(who, body.user, body.groups)
    found = await _retrieval(svc).retriever.retrieve(
        body.query, principal, [collection], body.top_k, rerank=body.rerank
    )
    hits = [
        SearchHit(
            chunk_id=p.chunk_id, source=p.source, version=p.version, heading=p.heading, text=p.text, score=p.score
        )
        for p in found.passages
    ]
    timings = {name: round(seconds * 1000, 3) for name, seconds in found.stage_seconds.items()}
    return SearchOut(status=found.status, degraded=list(found.degraded), data=hits, timings_ms=timings)
