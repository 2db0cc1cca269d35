"""The fallback ladder: a request tries its deployment's targets, then each fallback rung's, until one
yields a first token. A failure before that (no connection, a 5xx or 429, a first token too slow, a stream
broken early) moves it on, after a jittered backoff, while the retry budget allows (a sibling replica
taking over from one whose connection is lost spends none); once a first token is out, the answer
belongs to that target, and a later failure ends the stream with an error event."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from penstock.config import RouterConfig
from penstock.errors import DeadlineExceeded, NoDeploymentAvailable, Overloaded, PenstockError, UpstreamFailed
from penstock.router.deployment_queue import Slot, every_refused
from penstock.router.deployments import Deployment
from penstock.router.remote import RemoteDeployment
from penstock.router.retry_budget import RetryBudget
from penstock.router.upstream import Embedded
from penstock.types import ChatRequest, Prompt, RouteDecision, TokenEvent

# Failures that cost the upstream no work: the connection itself failed (refused, or reset as a killed
# process's are), or the adaptive throttle kept the request here (router/throttle.py). Trying the next
# target after one is failover, not a retry that adds load, and spends no retry budget; a retry after an
# answer (5xx, 429, a timeout, bad SSE) does.
CONNECTION_LOST = frozenset({"connect", "dropped"})
NO_WORK_DONE = CONNECTION_LOST | {"throttled"}

# A fallback rung's own prompt (its tokenizer and window may differ), or None where it does not fit.
Fit = Callable[[str], tuple[Prompt, ChatRequest] | None]


@dataclass(frozen=True, slots=True)
class Started:
    """An answer under way: who gives it and why, what it was sent, and its events from the first on."""

    decision: RouteDecision
    prompt: Prompt
    request: ChatRequest
    events: AsyncIterator[TokenEvent]
    target: str  # the replica's URL, or in-process: for operators' logs, never for clients
    native_tools: bool


class Ladder:
    def __init__(
        self, deployments: Mapping[str, Deployment], config: RouterConfig, rng: random.Random | None = None
    ) -> None:
        self.deployments = deployments  # live: the control plane's changes apply to the next request
        self._config = config
        self.budget = RetryBudget(config)
        self._rng = rng or random.Random()
        self.decisions: Counter[tuple[str, str, str]] = Counter()  # (model, deployment, reason kind): answers begun

    async def start(
        self, decision: RouteDecision, prompt: Prompt, request: ChatRequest, fit: Fit, *, broken: str | None = None
    ) -> Started:
        """`broken`: the target whose answer to this request broke before the client saw any of it; the request
        begins again elsewhere (earning the budget nothing: it was counted the first time)."""
        if broken is None:
            self.budget.request()
        tally = _Tally()
        for rung, name in enumerate((decision.deployment, *decision.fallbacks)):
            deployment = self.deployments[name]
            sent = (prompt, request) if rung == 0 else fit(name)
            if sent is None:
                tally.failures.append(f"{name}:too_long")
                continue
            try:  # a place in its queue first: a rung that cannot take the request in time is passed over
                slot = await deployment.queue.enter(len(sent[0].token_ids), sent[1])
            except Overloaded as refusal:
                tally.failures.append(f"{name}:overloaded")
                tally.refusals.append(refusal)
                tally.free = True
                continue
            try:
                started = await self._on(deployment, sent, decision, tally, slot, broken)
            except BaseException:
                slot.release()
                raise
            if started is not None:
                return started
            slot.release()
        raise _exhausted(decision.model, tally)

    async def _on(
        self,
        deployment: Deployment,
        sent: tuple[Prompt, ChatRequest],
        decision: RouteDecision,
        tally: _Tally,
        slot: Slot,
        broken: str | None,
    ) -> Started | None:
        """The answer begun by one of the deployment's targets, or None when none could begin it."""
        name = deployment.name
        tried: set[str] = {broken} if broken is not None else set()
        reached = False
        while (choice := deployment.choose(sent[0], frozenset(tried))) is not None:
            target, _how = choice
            tried.add(target.name)
            reached = True
            if tally.attempts and not tally.free and not await self._may_retry(tally.attempts):
                raise _exhausted(decision.model, tally, "retry_budget")
            tally.attempts += 1
            events = deployment.stream(target, *sent)
            try:
                first = await anext(events)
            except UpstreamFailed as exc:
                if not exc.retryable:
                    raise
                tally.failures.append(f"{name}:{exc.kind}")
                tally.free = exc.kind in NO_WORK_DONE
                if exc.kind == "throttled":  # the whole deployment is: on to the next rung
                    return None
                continue
            slot.observe(first)
            served = RouteDecision(name, decision.model, _reason(decision.reason, tally.failures), ())
            self.decisions[decision.model, name, reason_kind(served.reason)] += 1
            return Started(served, *sent, _from(first, events, slot), target.name, deployment.native_tools)
        if not reached:
            tally.failures.append(f"{name}:unavailable")
        return None

    async def embed(self, deployment: RemoteDeployment, texts: Sequence[str], dimensions: int | None) -> Embedded:
        """Embeddings from one remote deployment, its replicas tried in turn under the same budget. Never a
        fallback to another deployment: another model's vectors live in another space, and mixed with the
        client's stored ones they would match nothing while looking like an answer."""
        self.budget.request()
        failures: list[str] = []
        tried: set[str] = set()
        free = False
        while (choice := deployment.replicas.pick(None, frozenset(tried))) is not None:
            replica, _how = choice
            if tried and not free and not await self._may_retry(len(tried)):
                failures.append("retry_budget")
                break
            tried.add(replica.name)
            try:
                return await deployment.embed(replica, texts, dimensions)
            except UpstreamFailed as exc:
                if not exc.retryable:
                    raise
                failures.append(f"{deployment.name}:{exc.kind}")
                if exc.kind == "throttled":
                    break
                free = exc.kind in NO_WORK_DONE
        raise _exhausted(deployment.name, _Tally(failures or [f"{deployment.name}:unavailable"]))

    def may_restart(self, failure: UpstreamFailed) -> bool:
        """Whether an answer that broke part way may begin again elsewhere: a failure of the upstream's, and a
        lost connection (free) or a retry the budget allows."""
        return failure.retryable and (failure.kind in NO_WORK_DONE or self.budget.try_spend())

    async def _may_retry(self, attempts: int) -> bool:
        if not self.budget.try_spend():
            return False
        ceiling = min(self._config.max_backoff_s, self._config.backoff_s * 2 ** (attempts - 1))
        await asyncio.sleep(self._rng.uniform(0, ceiling))  # full jitter: retries do not arrive in step
        return True


def reason_kind(reason: str) -> str:
    """A reason's kind, few enough for a metric label: the last thing that decided (fallback over overflow
    over weight over the rule or default that began it)."""
    for kind in ("fallback", "overflow", "weight"):
        if f"{kind}:" in reason:
            return kind
    return reason.split(",", 1)[0]


def _reason(chosen: str, failures: list[str]) -> str:
    return f"{chosen},fallback:{'|'.join(failures)}" if failures else chosen


@dataclass(slots=True)
class _Tally:
    """One request's way down the ladder so far."""

    failures: list[str] = field(default_factory=list)  # deployment:kind, in order: the route reason's tail
    refusals: list[Overloaded] = field(default_factory=list)  # queues that could not take it in time
    attempts: int = 0  # calls made
    free: bool = False  # the last one cost its upstream nothing: the next spends no budget


def _exhausted(model: str, tally: _Tally, last: str | None = None) -> PenstockError:
    failures = [*tally.failures, last] if last is not None else tally.failures
    what = ", ".join(failures) or "nothing to try"
    if failures and all(f.endswith(":timeout") for f in failures):
        return DeadlineExceeded(f"no deployment for '{model}' answered in time ({what})", code="upstream_timeout")
    if len(failures) == 1 and tally.refusals:  # one deployment, one queue: its own words
        return tally.refusals[0]
    if tally.refusals:  # some rung will take it once its queue has room: a 429 to retry after that
        return every_refused(model, tally.refusals, what)
    return NoDeploymentAvailable(f"no deployment for '{model}' could answer now ({what})")


async def _from(first: TokenEvent, rest: AsyncIterator[TokenEvent], slot: Slot) -> AsyncIterator[TokenEvent]:
    """The events again from the first, which the ladder already read, each timed for the deployment's
    queue; closing this closes the call and gives the slot back."""
    try:
        yield first
        async for event in rest:
            slot.observe(event)
            yield event
    finally:
        slot.release()
        await rest.aclose()  # type: ignore[attr-defined]
