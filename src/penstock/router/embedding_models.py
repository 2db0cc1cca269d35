"""Which model answers POST /v1/embeddings: the bundled embedder in this process, or a remote deployment
(`backend: openai`) whose upstream serves embeddings (vLLM's --task embed, TEI, llama.cpp's server, a
hosted API). A remote one counts tokens with its deployment's tokenizer for limits and window checks,
and bills the upstream's own count where it gives one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from penstock.errors import ModelNotFound
from penstock.retrieval.embedder import Embedder
from penstock.router.deployments import Deployment
from penstock.router.ladder import Ladder
from penstock.router.remote import RemoteDeployment
from penstock.router.upstream import Embedded


class EmbeddingModel(Protocol):
    name: str
    max_tokens: int  # per text
    dimensions: int | None  # None: the upstream's to say (and to refuse a `dimensions` it cannot give)

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    async def embed(self, texts: Sequence[str], dimensions: int | None) -> Embedded: ...


class LocalEmbeddings:
    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self.name = embedder.name
        self.max_tokens = embedder.max_tokens
        self.dimensions: int | None = embedder.dimensions

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._embedder.count_tokens(texts)

    async def embed(self, texts: Sequence[str], dimensions: int | None) -> Embedded:
        """`dimensions`: checked against the model's by the caller (this model has one size only)."""
        return Embedded(await self._embedder.embed(texts), None)


class RemoteEmbeddings:
    def __init__(self, deployment: RemoteDeployment, ladder: Ladder) -> None:
        self._deployment = deployment
        self._ladder = ladder
        self.name = deployment.name
        self.max_tokens = deployment.codec.context_window
        self.dimensions: int | None = None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self._deployment.codec.encode(text)) for text in texts]

    async def embed(self, texts: Sequence[str], dimensions: int | None) -> Embedded:
        return await self._ladder.embed(self._deployment, texts, dimensions)


class EmbeddingModels:
    def __init__(self, embedder: Embedder, deployments: Mapping[str, Deployment], ladder: Ladder) -> None:
        """`deployments`: the fleet's live mapping, so a deployment the admin API adds is found at once."""
        self.local = LocalEmbeddings(embedder)
        self._deployments = deployments
        self._ladder = ladder

    def get(self, name: str) -> EmbeddingModel:
        if name == self.local.name:
            return self.local
        deployment = self._deployments.get(name)
        if isinstance(deployment, RemoteDeployment):
            return RemoteEmbeddings(deployment, self._ladder)
        raise ModelNotFound(
            f"The model '{name}' does not exist for embeddings (this server's own: '{self.local.name}', or a"
            " remote deployment that serves them)",
            param="model",
        )
