import pytest

from penstock.errors import ModelNotFound
from penstock.router.router import Router
from penstock.types import Caller, ChatRequest, Message, SamplingParams


def request_for(model: str) -> ChatRequest:
    return ChatRequest(
        request_id="r1",
        model=model,
        messages=(Message("user", "hi"),),
        sampling=SamplingParams(),
        caller=Caller(key_id="k", tenant="t"),
    )


def test_requested_model_names_its_deployment() -> None:
    decision = Router(["small", "large"]).route(request_for("large"))
    assert (decision.deployment, decision.reason) == ("large", "requested")


def test_unknown_model_is_not_silently_substituted() -> None:
    with pytest.raises(ModelNotFound) as info:
        Router(["small"]).route(request_for("gpt-4"))
    assert info.value.status == 404
    assert info.value.param == "model"
    assert info.value.to_openai()["error"]["code"] == "model_not_found"
