"""Client text made fit for PostgreSQL, whose text and jsonb values cannot hold a NUL character (U+0000).

JSON allows one, and a client may send it anywhere: a document, a search query, a key's name, a model
name that is then refused, a feedback comment. Left in, the write failed: a 500 for the request, and
for the ledger a whole batch of other requests' rows, on every replay. A NUL carries nothing anyone
reads, so it is dropped: from every text parameter of the app's pooled connections (`nul_free_text`),
and from JSON text sent as one parameter (`storable_json`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Dumper, PyFormat

# A NUL in orjson's output is the escape \u0000 after an even run of backslashes (an odd run would
# make its backslash a literal one); the run is kept.
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")
# psycopg's own string dumpers (its C ones where installed), which the NUL-free ones hand the rest to.
_TEXT = psycopg.adapters.get_dumper(str, PyFormat.TEXT)
_BINARY = psycopg.adapters.get_dumper(str, PyFormat.BINARY)


def storable_json(value: object) -> str:
    """`value` as JSON text for a `jsonb` parameter (orjson: dataclasses by field name), NULs dropped."""
    encoded = orjson.dumps(value)
    if b"\\u0000" in encoded:
        encoded = _NUL_ESCAPE.sub(rb"\1", encoded)
    return encoded.decode()


def nul_free_text(conn: AsyncConnection[Any]) -> None:
    """Strings sent on `conn` lose their NULs (psycopg's own dumpers, in C, do the rest)."""
    conn.adapters.register_dumper(str, _NulFreeBinary)
    conn.adapters.register_dumper(str, _NulFreeText)  # last: the one `%s` uses, as psycopg's own order has it


class _NulFree(Dumper):
    inner: type[Dumper]

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        self._inner = self.inner(cls, context)
        self.oid = self._inner.oid

    def dump(self, obj: str) -> Buffer | None:
        return self._inner.dump(obj.replace("\x00", "") if "\x00" in obj else obj)


class _NulFreeText(_NulFree):
    format = _TEXT.format
    inner = _TEXT


class _NulFreeBinary(_NulFree):
    format = _BINARY.format
    oid = _BINARY.oid
    inner = _BINARY
