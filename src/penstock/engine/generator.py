"""Stream one request's tokens from a worker thread to the event loop.

Requests run one at a time on a single worker thread; the continuous-batching engine replaces this.

All model compute belongs on that one thread. PyTorch's OpenMP runtime (libgomp) gives every thread
that runs a parallel op its own team; once the teams together hold more threads than there are cores,
libgomp stops spin-waiting between ops and every small op pays a futex wake-up. On 2 cores that halves
decode speed. `Generator.load` therefore loads the model on the worker thread too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from penstock.engine.loader import LoadedModel, load_chat_model
from penstock.engine.model import KVCache
from penstock.engine.sampler import request_rng, sample
from penstock.engine.streaming import EventBuilder
from penstock.engine.tokenizer import Tokenizer
from penstock.errors import ContextLengthExceeded, InvalidRequest
from penstock.types import Prompt, SamplingParams, TokenEvent

Emit = Callable[[TokenEvent | Exception], None]


def check_request(prompt: Prompt, params: SamplingParams, context_window: int) -> None:
    if not prompt.token_ids:
        raise InvalidRequest("the prompt has no tokens", param="messages")
    if params.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
    needed = len(prompt.token_ids) + params.max_tokens
    if needed > context_window:
        raise ContextLengthExceeded(
            f"the prompt ({len(prompt.token_ids)} tokens) plus max_tokens ({params.max_tokens}) "
            f"exceeds the context window of {context_window} tokens",
            param="messages",
        )


class Generator:
    """Serves a LoadedModel: one request at a time, tokens streamed as TokenEvents."""

    def __init__(self, loaded: LoadedModel, *, worker: ThreadPoolExecutor | None = None) -> None:
        self.loaded = loaded
        self._worker = worker or ThreadPoolExecutor(max_workers=1, thread_name_prefix="penstock-generate")

    @classmethod
    def load(cls, path: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Generator:
        """Load the model on the worker thread that will run it (see the module docstring)."""
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="penstock-generate")
        loaded = worker.submit(load_chat_model, path, dtype=dtype, device=device).result()
        return cls(loaded, worker=worker)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.loaded.tokenizer

    @property
    def context_window(self) -> int:
        return self.loaded.args.max_seq_len

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    async def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[TokenEvent]:
        """Events until one carries a finish_reason. Closing the iterator early stops generation."""
        check_request(prompt, params, self.context_window)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent | Exception] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: TokenEvent | Exception) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        self._worker.submit(self._run, prompt, params, emit, cancelled)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            cancelled.set()

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)

    @torch.inference_mode()
    def _run(self, prompt: Prompt, params: SamplingParams, emit: Emit, cancelled: threading.Event) -> None:
        if cancelled.is_set():
            return
        try:
            for event in self._events(prompt.token_ids, params):
                if cancelled.is_set():
                    return
                emit(event)
        except Exception as exc:  # the request fails; the worker lives on for the next one
            emit(exc)

    def _events(self, prompt: Sequence[int], params: SamplingParams) -> Iterator[TokenEvent]:
        budget = min(params.max_tokens, self.context_window - len(prompt))
        cache = KVCache(self.loaded.args, len(prompt) + budget, device=self.loaded.device, dtype=self.loaded.dtype)
        rng = request_rng(params.seed, self.loaded.device)
        builder = EventBuilder(self.tokenizer, params)
        logits = self._forward(prompt, 0, cache)
        for step in range(budget):
            token = sample(logits, params, rng)
            event = builder.event(token, last=step == budget - 1)
            yield event
            if event.finish_reason is not None:
                return
            logits = self._forward([token], len(prompt) + step, cache)

    def _forward(self, tokens: Sequence[int], start: int, cache: KVCache) -> Tensor:
        """Logits (vocab_size,) after `tokens`, placed at `start` and appended to the cache."""
        device = self.loaded.device
        ids = torch.tensor([list(tokens)], device=device)
        positions = torch.arange(start, start + len(tokens), device=device)
        return self.loaded.model(ids, positions, cache, last_only=True)[0, -1]
