"""Model choice: the requested model names a deployment; never a silent substitute."""

from __future__ import annotations

from collections.abc import Iterable

from penstock.errors import ModelNotFound
from penstock.types import ChatRequest, RouteDecision


class Router:
    def __init__(self, deployments: Iterable[str]) -> None:
        self._deployments = tuple(deployments)

    @property
    def models(self) -> tuple[str, ...]:
        return self._deployments

    def route(self, request: ChatRequest) -> RouteDecision:
        if request.model not in self._deployments:
            raise ModelNotFound(
                f"The model '{request.model}' does not exist; available: {', '.join(self._deployments)}",
                param="model",
            )
        return RouteDecision(deployment=request.model, model=request.model, reason="requested")
