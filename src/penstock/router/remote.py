"""A deployment served by an OpenAI-compatible server's replicas: the request sent to one of them, its
stream read back as TokenEvents within the deployment's timeouts, and each call's outcome given to that
replica's breaker."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

import orjson

from penstock.config import UpstreamConfig
from penstock.engine.served import ChatCodec
from penstock.errors import InvalidRequest, UpstreamFailed
from penstock.router.deployment_queue import DeploymentQueue
from penstock.router.http_client import ConnectError, Disconnected, HttpClient, Response
from penstock.router.replicas import Replica, ReplicaSet, affinity_key
from penstock.router.schema_check import (
    CALL_RETRY,
    SCHEMA_RETRY,
    asked_again,
    calls_error,
    schema_error,
    with_schema,
    with_tools,
)
from penstock.router.throttle import AdaptiveThrottle
from penstock.router.upstream import (
    Embedded,
    StreamReader,
    embeddings_of,
    error_detail,
    request_body,
    status_failure,
)
from penstock.types import ChatRequest, Grammar, Prompt, TokenEvent, Usage

MAX_ERROR_BODY = 4096


class RemoteDeployment:
    """`codec`: the deployment's tokenizer and template, which count tokens and fit the context window
    here (the upstream applies its own template to the messages it is sent)."""

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        codec: ChatCodec,
        client: HttpClient,
        api_key: str | None,
        queue: DeploymentQueue,
    ) -> None:
        self.name = name
        self.codec = codec
        self.queue = queue
        self.config = config
        self.replicas = ReplicaSet(config.urls, config.breaker, config.max_concurrency, config.balance_bound)
        self.throttle = AdaptiveThrottle()  # this gateway's view of how much the upstream accepts
        self.schema_outcomes: Counter[str] = Counter()  # valid, repaired, invalid (structured_output: validate)
        self._client = client
        self.upstream_model = config.model or name  # what the upstream is asked for
        # native: the upstream renders tools and returns calls already parsed; validate: it is told of them in
        # the conversation, and the pipeline reads the calls out of its text as it does the engine's.
        self.native_tools = config.structured_output == "native"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._post_headers = {**self.headers, "Content-Type": "application/json"}

    def in_flight(self) -> int:
        return self.replicas.in_flight

    def check_grammar(self, grammar: Grammar) -> None:
        """Only JSON schemas (what OpenAI's response_format and jsonschema both take), and with `validate` the
        tool-call format's grammar (tools with tool_choice auto): the calls are checked once written."""
        if grammar.kind != "json_schema" and not (grammar.kind == "lark" and not self.native_tools):
            raise InvalidRequest(
                f"deployment {self.name} is remote: it takes JSON-schema output constraints, not {grammar.kind}",
                param="response_format",
            )

    def choose(self, prompt: Prompt, tried: frozenset[str]) -> tuple[Replica, str] | None:
        key = affinity_key(prompt.token_ids, self.config.affinity_tokens)
        return self.replicas.pick(key, tried)

    def stream(self, replica: Replica, prompt: Prompt, request: ChatRequest) -> AsyncIterator[TokenEvent]:
        """The replica's answer; its breaker hears the outcome, its in-flight count covers the call."""
        grammar = request.sampling.grammar
        if self.native_tools or (grammar is None and not request.calls_tools):
            return self._counted(replica, prompt, request)  # no layer of its own around each event
        free = replace(
            request, tools=(), sampling=replace(request.sampling, grammar=None)
        )  # asks the upstream for neither
        if request.calls_tools:
            check = _Check(with_tools(prompt, request), partial(calls_error, request=request), CALL_RETRY, "tool_call")
        else:
            assert grammar is not None
            schema = grammar.source
            check = _Check(with_schema(prompt, schema), partial(schema_error, schema=schema), SCHEMA_RETRY, "schema")
        return self._replayed(replica, free, check)

    async def _replayed(self, replica: Replica, free: ChatRequest, check: _Check) -> AsyncIterator[TokenEvent]:
        for event in await self._checked(replica, free, check):
            yield event

    async def _checked(self, replica: Replica, free: ChatRequest, check: _Check) -> list[TokenEvent]:
        """A whole answer, checked and asked again once if wrong (both calls billed)."""
        events = [e async for e in self._counted(replica, check.prompt, free)]
        error = check.error(events)
        if error is None:
            self.schema_outcomes["valid"] += 1
            return events
        correction = check.retry.format(error=error)
        again = [e async for e in self._counted(replica, asked_again(check.prompt, events, correction), free)]
        failed = check.error(again)
        self.schema_outcomes["repaired" if failed is None else "invalid"] += 1
        if failed is not None:
            raise UpstreamFailed(f"deployment {self.name} answered wrongly twice: {failed}", kind=check.kind)
        first, last = events[-1].usage, again[-1].usage
        if first is not None and last is not None:
            total = Usage(first.prompt_tokens + last.prompt_tokens, first.completion_tokens + last.completion_tokens)
            again[-1] = replace(again[-1], usage=total)
        return again

    async def embed(self, replica: Replica, texts: Sequence[str], dimensions: int | None) -> Embedded:
        """The replica's vectors for `texts` (POST {url}/embeddings), within the total timeout, its load and its
        breaker's verdict kept as for a stream (the whole answer stands for the first token)."""
        body: dict[str, object] = {"model": self.upstream_model, "input": list(texts), "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        self._throttled()
        _begun(replica)
        started, verdict = time.monotonic(), "abandoned"
        deadline = asyncio.get_running_loop().time() + self.config.timeouts.total_s
        try:
            with _failures(self.name):
                response = await self._post(replica.url + "/embeddings", body, deadline)
                try:
                    raw = await response.read(deadline=deadline)
                finally:
                    response.release()
            embedded = embeddings_of(self.name, raw, len(texts))
            self.throttle.accepted()
            verdict = "ok"
            return embedded
        except UpstreamFailed:
            verdict = "failed"
            raise
        finally:
            _ended(replica, verdict, time.monotonic() - started)

    async def _counted(self, replica: Replica, prompt: Prompt, request: ChatRequest) -> AsyncIterator[TokenEvent]:
        """One call to the replica, with its load and its breaker's verdict kept."""
        self._throttled()
        _begun(replica)
        started, verdict, first_token_s = time.monotonic(), "abandoned", 0.0
        try:
            async for event in self._call(replica, prompt, request):
                if verdict == "abandoned":
                    verdict = "streaming"
                    first_token_s = time.monotonic() - started
                    self.throttle.accepted()
                yield event
            verdict = "ok"
        except UpstreamFailed:
            verdict = "failed"
            raise
        except InvalidRequest:  # the client's mistake, which the upstream took and answered
            self.throttle.accepted()
            raise
        finally:
            _ended(replica, verdict, first_token_s)

    async def _call(self, replica: Replica, prompt: Prompt, request: ChatRequest) -> AsyncIterator[TokenEvent]:
        path, body = request_body(prompt, request, self.upstream_model)
        timeouts, loop = self.config.timeouts, asyncio.get_running_loop()
        reader = StreamReader(self.name, request.raw_prompt is None, self._count, len(prompt.token_ids))
        end = loop.time() + timeouts.total_s
        with _failures(self.name):
            response = await self._post(replica.url + path, body, min(end, loop.time() + timeouts.first_token_s))
            try:
                wait = timeouts.first_token_s  # the status line and the first token share its deadline
                while not reader.done:
                    line = await response.readline(min(end, loop.time() + wait))
                    if not line:
                        break
                    for event in reader.line(line):
                        wait = timeouts.between_tokens_s
                        yield event
            finally:
                response.release(drain=reader.done)  # a stream left unfinished is closed: the upstream stops
        for event in reader.finish(request.sampling.n):
            yield event

    async def _post(self, url: str, body: dict[str, object], deadline: float) -> Response:
        """The upstream's response to `body`, once its status is 200; else its error, as the ladder's failure."""
        response = await self._client.request(
            "POST",
            url,
            orjson.dumps(body),
            self._post_headers,
            connect_timeout_s=self.config.timeouts.connect_s,
            deadline=deadline,
        )
        if response.status == 200:
            return response
        try:
            detail = error_detail(await response.read(MAX_ERROR_BODY, deadline))
        finally:
            response.release()
        raise status_failure(self.name, response.status, detail)

    def _throttled(self) -> None:
        """Refuse here, before any connection, what the adaptive throttle keeps from a refusing upstream."""
        if not self.throttle.allow():
            raise UpstreamFailed(
                f"deployment {self.name} is refusing most requests; this one was kept back", kind="throttled"
            )

    def _count(self, text: str) -> int:
        return len(self.codec.encode(text)) if text else 0


@dataclass(frozen=True, slots=True)
class _Check:
    """How `structured_output: validate` asks for an answer and checks it: the conversation that states what
    is wanted, what is wrong with an answer (None: nothing), how to say so, and the failure's kind."""

    prompt: Prompt
    error: Callable[[list[TokenEvent]], str | None]
    retry: str
    kind: str


@contextmanager
def _failures(deployment: str) -> Iterator[None]:
    """A call's timeout and connection errors as the ladder's UpstreamFailed kinds."""
    try:
        yield
    except TimeoutError:
        raise UpstreamFailed(f"deployment {deployment} did not answer in time", kind="timeout") from None
    except ConnectError as exc:
        raise UpstreamFailed(f"deployment {deployment} could not be reached: {exc}", kind="connect") from None
    except Disconnected as exc:
        raise UpstreamFailed(f"deployment {deployment} broke the connection: {exc}", kind="dropped") from None


def _begun(replica: Replica) -> None:
    replica.in_flight += 1
    replica.calls += 1
    replica.breaker.begin()


def _ended(replica: Replica, verdict: str, first_token_s: float) -> None:
    """A call over: `verdict` ok, failed, or anything else when the client left or was refused as its mistake."""
    replica.in_flight -= 1
    if verdict == "ok":
        replica.breaker.succeeded(first_token_s)
    elif verdict == "failed":
        replica.failures += 1
        replica.breaker.failed()
    else:
        replica.breaker.abandoned()
