"""A route: the name a client sends as `model` that picks a deployment, and the ladder behind it.

In order: the first rule whose conditions hold gives the ladder (by tenant or key, by the request's
shape), else the route's own; the deployments given weights share the first rung by them; a rung whose
in-flight count has reached its `overflow` mark is passed over; and a key limited to some models is never
served by a deployment outside them. The reason travels with the decision to the answer's header, the
trace, the ledger's log line and the metrics.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from penstock.config import RouteConfig, RouteMatch
from penstock.errors import PermissionDenied
from penstock.types import ChatRequest, RouteDecision


class Route:
    def __init__(self, config: RouteConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def counting_deployment(self) -> str:
        """Whose tokenizer counts the prompt that rules on prompt length look at: the default first rung."""
        return self.config.ladder[0]

    def decide(self, request: ChatRequest, prompt_tokens: int, load: Callable[[str], int]) -> RouteDecision:
        ladder, reasons = self._ladder(request, prompt_tokens)
        ladder, reasons = self._weighted(ladder, reasons)
        ladder, reasons = self._overflowed(ladder, reasons, load)
        ladder = self._allowed(ladder, request)
        return RouteDecision(ladder[0], self.name, ",".join(reasons), tuple(ladder[1:]))

    def _ladder(self, request: ChatRequest, prompt_tokens: int) -> tuple[list[str], list[str]]:
        for rule in self.config.rules:
            if matches(rule.when, request, prompt_tokens):
                return list(rule.ladder), [f"rule:{rule.name}"]
        return list(self.config.ladder), ["default"]

    def _weighted(self, ladder: list[str], reasons: list[str]) -> tuple[list[str], list[str]]:
        weighted = [d for d in ladder if self.config.weights.get(d, 0) > 0]
        if len(weighted) < 2:
            return ladder, reasons
        chosen = self._rng.choices(weighted, [self.config.weights[d] for d in weighted])[0]
        return [chosen, *(d for d in ladder if d != chosen)], [*reasons, f"weight:{chosen}"]

    def _overflowed(
        self, ladder: list[str], reasons: list[str], load: Callable[[str], int]
    ) -> tuple[list[str], list[str]]:
        """The ladder from its first rung under its overflow mark; the last rung takes what the others cannot."""
        at = 0
        while at < len(ladder) - 1 and load(ladder[at]) >= self.config.overflow.get(ladder[at], 1 << 62):
            at += 1
        return ladder[at:], reasons if at == 0 else [*reasons, f"overflow:{','.join(ladder[:at])}"]

    def _allowed(self, ladder: list[str], request: ChatRequest) -> list[str]:
        allowed = request.caller.scopes.models
        if allowed is None:
            return ladder
        kept = [d for d in ladder if d in allowed]
        if not kept:
            raise PermissionDenied(
                f"this API key may not use any deployment behind the route '{self.name}'",
                param="model",
                code="model_not_allowed",
            )
        return kept


def matches(when: RouteMatch, request: ChatRequest, prompt_tokens: int) -> bool:
    caller, grammar = request.caller, request.sampling.grammar
    checks = (
        when.tenants is None or caller.tenant in when.tenants,
        when.keys is None or caller.key_id in when.keys,
        when.min_prompt_tokens is None or prompt_tokens >= when.min_prompt_tokens,
        when.max_prompt_tokens is None or prompt_tokens <= when.max_prompt_tokens,
        when.tools is None or request.calls_tools == when.tools,
        when.json_schema is None or (grammar is not None and grammar.kind == "json_schema") == when.json_schema,
        when.retrieval is None or (request.retrieval is not None) == when.retrieval,
    )
    return all(checks)
