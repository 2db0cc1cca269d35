"""The engine's thread and its asyncio face: `generate` streams one request's TokenEvents.

All torch work, model loading included, happens on the engine's own thread: torch ops spread
over several threads each bring their own OpenMP pool and run markedly slower on a small CPU.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path

import structlog
import torch

from penstock.engine.grammar import GrammarCompiler
from penstock.engine.llm_engine import EngineConfig, EngineStats, LLMEngine
from penstock.engine.loader import LoadedModel, load_chat_model
from penstock.engine.model import ModelArgs
from penstock.engine.observer import EngineObserver
from penstock.engine.sampler import request_rng
from penstock.engine.sequence import Priority, Sequence
from penstock.errors import ContextLengthExceeded, InvalidRequest
from penstock.types import Prompt, SamplingParams, TokenEvent

log = structlog.get_logger("penstock.engine")
Command = Callable[[LLMEngine], None]
Configure = Callable[[ModelArgs], EngineConfig]


class AsyncEngine:
    def __init__(
        self,
        load: Callable[[], LoadedModel],
        configure: Configure,
        observer: EngineObserver | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        """`configure` turns the loaded model's shape into the engine's configuration (KV cache size)."""
        self._inbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        ready: Future[LLMEngine] = Future()
        start = partial(self._main, load, configure, observer, threads, ready)
        self._thread = threading.Thread(target=start, name="penstock-engine")
        self._thread.start()
        self.core = ready.result()
        self.loaded = self.core.runner.loaded
        self.grammars = GrammarCompiler(self.loaded.tokenizer)

    @classmethod
    def load(
        cls,
        path: Path,
        configure: Configure | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        observer: EngineObserver | None = None,
    ) -> AsyncEngine:
        return cls(partial(load_chat_model, path, dtype=dtype), configure or (lambda _: EngineConfig()), observer)

    @property
    def context_window(self) -> int:
        return self.loaded.args.max_seq_len

    async def generate(
        self, prompt: Prompt, params: SamplingParams, priority: Priority = Priority.INTERACTIVE
    ) -> AsyncIterator[TokenEvent]:
        """Events until each of the n choices has finished (event.index tells them apart).

        Closing the iterator early aborts the request and frees its blocks.
        """
        seq = self._sequence(prompt, params, priority)
        if params.grammar is not None:  # compiled off the event loop: a large schema takes a while
            seq.token_mask = await asyncio.to_thread(self.grammars.mask, params.grammar, self.loaded.args.vocab_size)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent | Exception] = asyncio.Queue()
        push = lambda item: loop.call_soon_threadsafe(events.put_nowait, item)  # noqa: E731
        self._inbox.put(lambda core: _add(core, seq, push))
        unfinished = params.n
        try:
            while unfinished:
                item = await events.get()
                if isinstance(item, Exception):
                    raise item
                unfinished -= item.finish_reason is not None
                yield item
        finally:
            if unfinished:
                self._inbox.put(lambda core: core.abort(seq.seq_id))

    async def stats(self) -> EngineStats:
        """A consistent snapshot, taken on the engine thread between steps."""
        result: Future[EngineStats] = Future()
        self._inbox.put(lambda core: result.set_result(core.stats()))
        return await asyncio.wrap_future(result)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join()

    def _sequence(self, prompt: Prompt, params: SamplingParams, priority: Priority) -> Sequence:
        if not prompt.token_ids:
            raise InvalidRequest("the prompt has no tokens", param="messages")
        max_tokens = params.max_tokens or self.context_window - len(prompt.token_ids)
        if len(prompt.token_ids) + max_tokens > self.context_window:
            raise ContextLengthExceeded(
                f"the prompt ({len(prompt.token_ids)} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"context window of {self.context_window} tokens",
                param="messages",
            )
        rng = request_rng(params.seed, self.loaded.device)
        return Sequence(list(prompt.token_ids), params, max_tokens=max_tokens, rng=rng, priority=priority)

    def _main(
        self,
        load: Callable[[], LoadedModel],
        configure: Configure,
        observer: EngineObserver | None,
        threads: int | None,
        ready: Future[LLMEngine],
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            loaded = load()
            core = LLMEngine(loaded, configure(loaded.args), observer)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(core)
        while self._drain(core, block=not core.has_work()):
            if core.has_work():
                _step(core)

    def _drain(self, core: LLMEngine, *, block: bool) -> bool:
        """Apply queued adds and aborts; False once close() was asked for."""
        try:
            command = self._inbox.get(block=block)
            while True:
                if command is None:
                    return False
                command(core)
                command = self._inbox.get_nowait()
        except queue.Empty:
            return True


def _step(core: LLMEngine) -> None:
    try:
        core.step()
    except Exception as exc:  # fail what was running, keep serving what comes next
        log.exception("engine_step_failed")
        core.fail_all(exc)


def _add(core: LLMEngine, seq: Sequence, push: Callable[[TokenEvent | Exception], None]) -> None:
    try:
        core.add(seq, push)
    except Exception as exc:  # a request the engine refuses fails alone
        push(exc)
