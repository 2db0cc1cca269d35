"""An OpenAI-compatible upstream that answers at once: what `bench gateway --upstream openai` puts behind
the gateway, so that the gateway's own cost with a network hop is what is measured.

Plain asyncio, HTTP/1.1 with keep-alive: it reads a request's head and body and answers chat completions
with one streamed token, its finish and its usage (or the whole answer as JSON when not asked to stream),
and GET /v1/models for health checks. Run as `python -m penstock.bench.instant_upstream --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from contextlib import suppress

MODEL = "instant"
_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}},
]
_STREAM = b"".join(f"data: {json.dumps({'object': 'chat.completion.chunk', **c})}\n\n".encode() for c in _CHUNKS)
STREAM = _STREAM + b"data: [DONE]\n\n"
WHOLE = json.dumps(
    {
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
    }
).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()


def response(body: bytes, content_type: str) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if head.startswith(b"GET"):
                writer.write(response(MODELS, "application/json"))
            elif b'"stream": true' in body or b'"stream":true' in body:
                writer.write(response(STREAM, "text/event-stream"))
            else:
                writer.write(response(WHOLE, "application/json"))
            await writer.drain()
    writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve_connection, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
