"""A small OpenAI-compatible server that fails on purpose, for the faults a real `penstock worker` cannot
be made to show: a slow first token, 500s and 429s, a connection dropped mid-stream, malformed SSE, wrong
usage. It listens on a free loopback port in a thread of its own; `fault` picks how it answers next."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.helpers import free_port

ANSWER = ["The ", "capital ", "of ", "France ", "is ", "Paris."]


@dataclass
class Upstream:
    url: str  # base URL, .../v1
    # none, slow_first, status_NNN, drop_mid, malformed, between (delay_s between chunks), wrong_usage, no_usage,
    # json (a JSON answer), json_second (prose, then JSON when told it was wrong), json_never (prose always),
    # call, call_second, call_never: the same with a tool call written as text
    fault: str = "none"
    delay_s: float = 0.0  # before the first chunk (slow_first) or between chunks
    calls: int = 0
    bodies: list[dict] = field(default_factory=list)


def _chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    payload: dict = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "choices": choices}
    if usage:
        payload["usage"] = usage
    return f"data: {json.dumps(payload)}\n\n".encode()


def build(state: Upstream) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in ("fault", "fault-embed")]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        state.calls += 1
        if request.headers.get("content-type") != "application/json":  # as strict as a real server
            return JSONResponse({"error": {"message": "send JSON", "type": "x"}}, status_code=415)
        state.bodies.append(await request.json())
        if state.fault.startswith("status_"):
            status = int(state.fault[-3:])
            return JSONResponse({"error": {"message": f"injected {status}", "type": "x"}}, status_code=status)
        return StreamingResponse(_answer(state, state.bodies[-1]), media_type="text/event-stream")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        state.calls += 1
        body = await request.json()
        state.bodies.append(body)
        if state.fault.startswith("status_"):
            status = int(state.fault[-3:])
            return JSONResponse({"error": {"message": f"injected {status}", "type": "x"}}, status_code=status)
        texts = body["input"]
        rows = [{"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(texts)]
        if state.fault == "malformed":
            rows = rows[:-1]  # one vector short
        usage = {"prompt_tokens": 7 * len(texts), "total_tokens": 7 * len(texts)}
        return JSONResponse({"object": "list", "data": rows[::-1], "model": body["model"], "usage": usage})

    return app


RIGHT_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WRONG_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"town": 75}}\n</tool_call>'


async def _answer(state: Upstream, body: dict) -> AsyncIterator[bytes]:
    if state.fault.startswith(("json", "call")):  # json, call: right at once; *_second: right when asked again
        asked_again = (
            "not valid" in body["messages"][-1]["content"] or "does not match" in body["messages"][-1]["content"]
        )
        right = state.fault in ("json", "call") or (state.fault.endswith("_second") and asked_again)
        if state.fault.startswith("call"):
            yield _chunk("Let me look that up. " + (RIGHT_CALL if right else WRONG_CALL))
        else:
            yield _chunk('{"city": "Paris"}' if right else "Paris, of course.")
        yield _chunk(finish="stop")
        yield _chunk(usage={"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35})
        yield b"data: [DONE]\n\n"
        return
    if state.fault == "slow_first":
        await asyncio.sleep(state.delay_s)
    if state.fault == "malformed":
        yield b"data: {not json at all\n\n"
        return
    if state.fault == "drop_at_0":
        raise ConnectionResetError("injected: connection dropped before any token")
    for at, word in enumerate(ANSWER):
        if state.fault == "drop_mid" and at == 3:
            raise ConnectionResetError("injected: connection dropped mid-stream")
        yield _chunk(word)
        if state.fault == "between" and state.delay_s:
            await asyncio.sleep(state.delay_s)
    yield _chunk(finish="stop")
    if state.fault == "wrong_usage":
        yield _chunk(usage={"prompt_tokens": -3, "completion_tokens": 10**9, "total_tokens": 0})
    elif state.fault != "no_usage":
        yield _chunk(usage={"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17})
    yield b"data: [DONE]\n\n"


@contextmanager
def running_upstream() -> Iterator[Upstream]:
    port = free_port()
    state = Upstream(f"http://127.0.0.1:{port}/v1")
    config = uvicorn.Config(build(state), host="127.0.0.1", port=port, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the fault upstream did not start")
        time.sleep(0.02)
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
