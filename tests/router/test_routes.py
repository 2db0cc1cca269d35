import json
import random
from collections import Counter

import pytest

from penstock.config import RouteConfig, RouteMatch, RouteRule
from penstock.errors import PermissionDenied
from penstock.identity import KeyScopes
from penstock.router.router import Router
from penstock.types import Caller, ChatRequest, Grammar, Message, Principal, RetrievalOptions, SamplingParams, Tool

ROUTE = RouteConfig(
    name="chat",
    ladder=["small", "big"],
    rules=[
        RouteRule(name="premium", when=RouteMatch(tenants=["acme"]), ladder=["big", "small"]),
        RouteRule(name="long", when=RouteMatch(min_prompt_tokens=1000), ladder=["long"]),
        RouteRule(name="tools", when=RouteMatch(tools=True), ladder=["big"]),
        RouteRule(name="json", when=RouteMatch(json_schema=True), ladder=["big"]),
        RouteRule(name="rag", when=RouteMatch(retrieval=True), ladder=["big", "long"]),
    ],
)


def request(tenant: str = "t", models: tuple[str, ...] | None = None, **fields: object) -> ChatRequest:
    caller = Caller(key_id="k", tenant=tenant, scopes=KeyScopes(models=models))
    base = {"sampling": SamplingParams(), "messages": (Message("user", "hi"),)}
    return ChatRequest(request_id="r", model="chat", caller=caller, **{**base, **fields})


def decide(req: ChatRequest, tokens: int = 10, route: RouteConfig = ROUTE, load=lambda _: 0):
    decision = Router(["small", "big", "long"], [route], load, random.Random(1)).route(req, tokens)
    return decision.deployment, decision.fallbacks, decision.reason


def test_rules_pick_by_tenant_and_shape_in_order() -> None:
    assert decide(request()) == ("small", ("big",), "default")
    assert decide(request("acme")) == ("big", ("small",), "rule:premium")
    assert decide(request(), tokens=1500) == ("long", (), "rule:long")
    tools = request(tools=(Tool("f"),))
    assert decide(tools)[2] == "rule:tools"
    schema = request(sampling=SamplingParams(grammar=Grammar("json_schema", json.dumps({"type": "object"}))))
    assert decide(schema)[2] == "rule:json"
    rag = request(retrieval=RetrievalOptions(("docs",), Principal("t")))
    assert decide(rag) == ("big", ("long",), "rule:rag")


def test_weights_split_the_first_rung() -> None:
    route = RouteConfig(name="chat", ladder=["small", "big"], weights={"small": 3, "big": 1})
    router = Router(["small", "big"], [route], rng=random.Random(7))
    firsts = Counter(router.route(request()).deployment for _ in range(4000))
    assert 0.72 < firsts["small"] / 4000 < 0.78
    decision = router.route(request())
    assert decision.reason.startswith("default,weight:") and len(decision.fallbacks) == 1


def test_a_rung_past_its_overflow_mark_is_passed_over() -> None:
    route = RouteConfig(name="chat", ladder=["small", "big"], overflow={"small": 4})
    assert decide(request(), route=route, load=lambda d: 3) == ("small", ("big",), "default")
    assert decide(request(), route=route, load=lambda d: 4) == ("big", (), "default,overflow:small")


def test_a_key_is_never_served_by_a_deployment_outside_its_models() -> None:
    assert decide(request(models=("chat", "big"))) == ("big", (), "default")
    with pytest.raises(PermissionDenied):
        decide(request(models=("chat",)))
