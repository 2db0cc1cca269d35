from __future__ import annotations

import numpy as np
import pytest

from penstock.errors import ConfigError, DependencyUnavailable
from penstock.store.database import Database, check_database, connect
from tests.helpers import free_port, scratch_database


def _unreachable_url() -> str:
    return f"postgresql://penstock:s3cret@127.0.0.1:{free_port()}/penstock"


async def test_ping_answers_true_on_an_open_database(database: Database) -> None:
    assert await database.ping()


async def test_pgvector_orders_rows_by_distance(database: Database) -> None:
    async with database.connection() as conn:
        await conn.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
        rows = [(1, np.array([1.0, 1.0, 1.0])), (2, np.array([0.0, 0.0, 1.0])), (3, np.array([5.0, 5.0, 5.0]))]
        async with conn.cursor() as cursor:
            await cursor.executemany("INSERT INTO items VALUES (%s, %s)", rows)
        cursor = await conn.execute(
            "SELECT id, embedding FROM items ORDER BY embedding <-> %s", (np.array([0.0, 0.0, 0.9]),)
        )
        found = await cursor.fetchall()
    assert [row[0] for row in found] == [2, 1, 3]
    assert found[0][1].to_list() == [0.0, 0.0, 1.0]  # read back as pgvector's Vector


# The next two tests write the same tenant: each would fail on the primary key if they shared a database.
@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_starts_from_an_empty_database(database: Database, run: int) -> None:
    async with database.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM tenants")
        assert await cursor.fetchone() == (0,)
        await conn.execute("INSERT INTO tenants (id, name) VALUES ('acme', %s)", (f"run {run}",))


async def test_open_on_an_unreachable_server_names_the_url_without_its_password() -> None:
    url = _unreachable_url()
    database = Database(url, connect_timeout_s=2)
    with pytest.raises(DependencyUnavailable) as caught:
        await database.open()
    assert "127.0.0.1" in caught.value.message
    assert "s3cret" not in caught.value.message
    assert "***" in caught.value.message
    assert not await database.ping()


async def test_open_with_a_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        await Database("postgresql://app@db/penstock?no_such_option=1").open()


async def test_ping_turns_false_when_the_database_goes_away(postgres_server: str) -> None:
    async with scratch_database(postgres_server, name="t_vanishing") as url, Database(url) as database:
        assert await database.ping()
        async with await connect(postgres_server, autocommit=True) as admin:
            await admin.execute("DROP DATABASE t_vanishing WITH (FORCE)")
        assert not await database.ping(timeout_s=0.5)


async def test_connection_on_a_closed_database_is_unavailable(database_url: str) -> None:
    database = Database(database_url)
    with pytest.raises(DependencyUnavailable):
        async with database.connection():
            pass


def test_check_database_reports_version_and_pgvector(database_url: str) -> None:
    check = check_database(database_url)
    assert check.server_version.split(".")[0].isdigit()
    assert check.pgvector_available


def test_check_database_raises_for_an_unreachable_server() -> None:
    with pytest.raises(DependencyUnavailable, match=r"\*\*\*"):
        check_database(_unreachable_url())
