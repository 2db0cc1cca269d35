"""Model choice: the requested model names a deployment or a route; never a silent substitute."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from penstock.config import RouteConfig
from penstock.errors import ModelNotFound
from penstock.router.routes import Route
from penstock.types import ChatRequest, RouteDecision


class Router:
    """`load`: a deployment's requests in flight, for routes that overflow past a mark."""

    def __init__(
        self,
        deployments: Iterable[str],
        routes: Iterable[RouteConfig] = (),
        load: Callable[[str], int] = lambda _: 0,
        rng: random.Random | None = None,
    ) -> None:
        self._rng = rng or random.Random()
        self._load = load
        self.update(deployments, routes)

    def update(self, deployments: Iterable[str], routes: Iterable[RouteConfig]) -> None:
        """What clients may name from now on (the control plane's changes, applied at once)."""
        self._deployments = tuple(deployments)
        self._routes = {r.name: Route(r, self._rng) for r in routes}

    @property
    def models(self) -> tuple[str, ...]:
        """What a client may name: deployments, then routes."""
        return (*self._deployments, *self._routes)

    def counting_deployment(self, request: ChatRequest) -> str:
        """The deployment whose tokenizer counts the prompt before the route decides (raises ModelNotFound)."""
        route = self._routes.get(request.model)
        if route is not None:
            return route.counting_deployment
        if request.model not in self._deployments:
            raise ModelNotFound(
                f"The model '{request.model}' does not exist; available: {', '.join(self.models)}", param="model"
            )
        return request.model

    def candidates(self, request: ChatRequest) -> tuple[str, ...]:
        """Every deployment that could serve the request, whatever its prompt (raises ModelNotFound)."""
        route = self._routes.get(request.model)
        if route is None:
            return (self.counting_deployment(request),)
        allowed = request.caller.scopes.models
        return tuple(d for d in sorted(route.config.deployments) if allowed is None or d in allowed)

    def route(self, request: ChatRequest, prompt_tokens: int = 0) -> RouteDecision:
        """The deployment and its fallbacks; `prompt_tokens` as the counting deployment counted them."""
        route = self._routes.get(request.model)
        if route is None:
            self.counting_deployment(request)  # raises for a name that is neither
            return RouteDecision(deployment=request.model, model=request.model, reason="requested")
        return route.decide(request, prompt_tokens, self._load)
