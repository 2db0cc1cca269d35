"""Client text made fit for PostgreSQL: NUL characters dropped, everything else exactly as it was."""

from __future__ import annotations

import orjson
import pytest

from penstock.store.database import Database
from penstock.store.storable import storable_json


async def test_pooled_connections_drop_nul_from_text_parameters(database: Database) -> None:
    async with database.connection() as conn:
        text = await (await conn.execute("SELECT %s, %s::text[], %s", ("a\x00b", ["\x00c"], "\\u0000"))).fetchone()
        binary = await (await conn.execute("SELECT %b, %b::text", ("a\x00b", "d\x00"))).fetchone()
    assert text == ("ab", ["c"], "\\u0000")
    assert binary == ("ab", "d")


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ({"a": "x\x00y"}, {"a": "xy"}),
        ({"a\x00": ["\x00"]}, {"a": [""]}),
        ({"a": "\\u0000"}, {"a": "\\u0000"}),  # a backslash and "u0000" typed as text
        ({"a": "\\\x00"}, {"a": "\\"}),  # a backslash, then a NUL
        ({"a": "\\\\\x00z"}, {"a": "\\\\z"}),
    ],
)
def test_json_loses_its_nul_characters_only(value: object, stored: object) -> None:
    assert orjson.loads(storable_json(value)) == stored
