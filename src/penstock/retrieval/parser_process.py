"""Documents are parsed in a process of their own, one at a time, each within limits.

Parsing is CPU work on the client's bytes, and a PDF's cost is not its size: an 11 KB file whose four
pages share one 4 MB content stream took pypdf 20-30 s, and pypdf's 75 MB cap per stream would let a
~200 KB file take hours. In the server's process that held the event loop (the audit saw /healthz
wait 19.8 s). Here the work runs in a spawned worker under a memory cap; a document that takes longer
than `timeout_s` has its worker killed (a thread could not be stopped) and is refused, and the next
document gets a fresh worker.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from penstock.errors import InvalidRequest
from penstock.retrieval.parsers import Format, Section, parse


@dataclass(frozen=True, slots=True)
class ParseLimits:
    timeout_s: float = 10.0
    max_pages: int = 500  # of a PDF
    max_chars: int = 1_000_000  # of a document's text, all sections together
    max_memory_mb: int = 2048  # the worker's address space


class ParserProcess:
    def __init__(self, limits: ParseLimits | None = None) -> None:
        self.limits = limits or ParseLimits()
        self._worker: tuple[BaseProcess, Connection] | None = None
        self._turn = asyncio.Lock()  # one document at a time: the worker holds one

    async def parse(self, content: bytes, fmt: Format) -> list[Section]:
        async with self._turn:
            return await asyncio.to_thread(self._parse, content, fmt)

    def close(self) -> None:
        if self._worker is not None:
            process, connection = self._worker
            self._worker = None
            connection.close()
            process.kill()
            process.join()

    def _parse(self, content: bytes, fmt: Format) -> list[Section]:
        connection = self._connection()
        connection.send((content, fmt, self.limits))
        if not connection.poll(self.limits.timeout_s):
            self.close()
            raise InvalidRequest(
                f"the document took longer than {self.limits.timeout_s:g} s to parse", param="documents"
            )
        try:
            ok, result = connection.recv()
        except EOFError:  # the worker died: out of memory, most likely
            self.close()
            raise InvalidRequest(
                "the document could not be parsed within the parser's memory", param="documents"
            ) from None
        if not ok:
            raise InvalidRequest(result, param="documents")
        return [Section(heading, text) for heading, text in result]

    def _connection(self) -> Connection:
        if self._worker is None or not self._worker[0].is_alive():
            self.close()
            ours, theirs = multiprocessing.Pipe()
            # spawn: a fork of a process running torch's threads is not safe
            process = multiprocessing.get_context("spawn").Process(
                target=_serve, args=(theirs,), name="penstock-parser", daemon=True
            )
            process.start()
            theirs.close()
            self._worker = (process, ours)
        return self._worker[1]


def _serve(connection: Connection) -> None:
    """The worker: documents in, sections (or the reason there are none) out, until the pipe closes."""
    limited = False
    while True:
        try:
            content, fmt, limits = connection.recv()
        except EOFError:
            return
        if not limited:
            cap = limits.max_memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            limited = True
        connection.send(_parsed(content, fmt, limits))


def _parsed(content: bytes, fmt: Format, limits: ParseLimits) -> tuple[bool, object]:
    try:
        sections = parse(content, fmt, max_pages=limits.max_pages)
    except InvalidRequest as exc:
        return False, exc.message
    except MemoryError:
        return False, "the document could not be parsed within the parser's memory"
    except Exception as exc:  # pypdf raises many kinds on a malformed file
        return False, f"cannot read the document: {type(exc).__name__}"
    chars = sum(len(s.text) for s in sections)
    if chars > limits.max_chars:
        return False, f"the document holds {chars} characters of text; at most {limits.max_chars} are indexed"
    return True, [(s.heading, s.text) for s in sections]
