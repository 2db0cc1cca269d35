"""Work for a client that went away is stopped, not finished for nobody.

A stream notices at its next write; a non-streaming answer writes nothing until it is whole, so it
watches the connection instead: the server's receive channel says `http.disconnect` once the client
is gone (after the body was read, it says nothing else until the response is sent). The audit saw a
request whose client gave up at 3 s run 177 s more, 2,400 tokens, and be recorded as answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

from penstock.errors import ClientDisconnected

T = TypeVar("T")


async def unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result; cancelled, and ClientDisconnected raised, if the client leaves first."""
    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watch.cancel()
    if not task.done() or task.cancelled():
        await asyncio.gather(task, return_exceptions=True)  # its cleanup (an aborted generation) runs first
        raise ClientDisconnected("the client disconnected before the answer was ready")
    return task.result()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
