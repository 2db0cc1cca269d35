"""GET /v1/usage (use and cost by day and model, with quality from feedback) and POST /v1/feedback.

A key sees its own tenant's figures; an admin key any tenant's, or all of them. Feedback is
accepted for the caller's own answered requests only, and its comment is redacted before it is
stored, like everything else Penstock writes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from penstock.errors import DependencyUnavailable, InvalidRequest, NotFound
from penstock.gateway.chat import ERRORS, caller
from penstock.gateway.json_body import StrictJsonRoute
from penstock.gateway.services import Services, services
from penstock.observability.redaction import redact
from penstock.router.scopes import tenant_in_reach
from penstock.store.feedback import Feedback
from penstock.store.ledger import LedgerStore
from penstock.types import Caller

router = APIRouter(responses=ERRORS, route_class=StrictJsonRoute)
MAX_DAYS = 366


class UsageOut(BaseModel):
    tenant: str
    date: date
    deployment: str | None
    model: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: float


class QualityOut(BaseModel):
    deployment: str
    requests: int
    rated: int
    task_success_rate: float | None
    escalation_rate: float | None
    negative_feedback_rate: float | None
    cost_per_successful_request: float | None


class UsageReport(BaseModel):
    object: Literal["usage"] = "usage"
    tenant: str | None  # None: every tenant (admin keys only)
    start: date
    end: date  # inclusive
    data: list[UsageOut]
    quality: list[QualityOut]


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    rating: Literal[-1, 0, 1]  # -1 bad, 0 neutral, 1 good
    escalated: bool = False  # the user was handed to a human
    comment: str = Field(default="", max_length=4000)


class FeedbackOut(BaseModel):
    object: Literal["feedback"] = "feedback"
    request_id: str
    rating: int
    escalated: bool


@router.get("/v1/usage", response_model=UsageReport)
async def usage(
    start: date | None = None,
    end: date | None = None,
    tenant: str | None = None,
    who: Caller = Depends(caller),
    svc: Services = Depends(services),
) -> UsageReport:
    ledger = _ledger(svc)
    tenant = tenant_in_reach(who, tenant)
    end = end or datetime.now(UTC).date()
    start = start or end - timedelta(days=29)
    if start > end or (end - start).days >= MAX_DAYS:
        raise InvalidRequest(f"start must be on or before end, at most {MAX_DAYS} days apart", param="start")
    since, until = _midnight(start), _midnight(end + timedelta(days=1))
    lines, quality = await ledger.usage(tenant, since, until), await ledger.quality(tenant, since, until)
    return UsageReport(
        tenant=tenant,
        start=start,
        end=end,
        data=[UsageOut(**{**_fields(line), "date": line.day}) for line in lines],
        quality=[QualityOut.model_validate(q.to_dict()) for q in quality],
    )


@router.post("/v1/feedback", status_code=201, response_model=FeedbackOut)
async def feedback(body: FeedbackIn, who: Caller = Depends(caller), svc: Services = Depends(services)) -> FeedbackOut:
    ledger, store = _ledger(svc), svc.feedback
    if store is None:
        raise DependencyUnavailable("feedback needs the database, which this server runs without")
    owner = svc.settlement.recent(body.request_id) or await ledger.owner(body.request_id)
    if owner is None or owner[0] != who.tenant:  # another tenant's request is as unknown as a missing one
        raise NotFound(f"no request '{body.request_id}' of yours to give feedback on", param="request_id")
    await store.record(
        Feedback(body.request_id, who.tenant, who.key_id, body.rating, body.escalated, redact(body.comment))
    )
    svc.settlement.feedback(owner[1], body.rating, body.escalated)
    return FeedbackOut(request_id=body.request_id, rating=body.rating, escalated=body.escalated)


def _ledger(svc: Services) -> LedgerStore:
    if svc.ledger is None:
        raise DependencyUnavailable("usage needs the database, which this server runs without")
    return svc.ledger


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _fields(line: object) -> dict[str, object]:
    return {name: getattr(line, name) for name in UsageOut.model_fields if name != "date"}
