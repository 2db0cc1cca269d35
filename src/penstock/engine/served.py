"""A deployment as the pipeline sees it: chat template, tokenizer, context window and token stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import torch

from penstock.config import DeploymentConfig
from penstock.engine.generator import Generator
from penstock.engine.locator import locate_chat_model
from penstock.types import Message, Prompt, SamplingParams, TokenEvent

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ServedModel:
    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self._template = generator.loaded.chat_template

    @property
    def context_window(self) -> int:
        return self._generator.context_window

    def render(self, messages: Sequence[Message]) -> str:
        return self._template.render(messages, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return self._generator.tokenizer.encode(text)

    def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TokenEvent]:
        return self._generator.generate(prompt, params)

    def close(self) -> None:
        self._generator.close()


def load_served_models(deployments: Iterable[DeploymentConfig]) -> dict[str, ServedModel]:
    """Load every deployment's weights; a missing model file fails here, at start, not per request."""
    served = {}
    for deployment in deployments:
        path = locate_chat_model(deployment.model_path)
        served[deployment.name] = ServedModel(Generator.load(path, dtype=DTYPES[deployment.dtype]))
    return served
