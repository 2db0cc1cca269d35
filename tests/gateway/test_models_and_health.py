from urllib.parse import urlsplit

import httpx
from psycopg import sql

from penstock.store.database import connect
from tests.gateway.conftest import MODEL


async def test_models_lists_the_deployments(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]
    assert body["data"][0]["object"] == "model"


async def test_single_model_and_unknown_model(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
    missing = await client.get("/v1/models/absent")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_healthz_needs_no_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"Authorization": ""})
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_models_and_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"models": True, "database": True}}


async def test_readyz_is_503_when_the_database_is_gone(
    client: httpx.AsyncClient, postgres_server: str, database_url: str
) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    async with await connect(postgres_server, autocommit=True) as admin:
        # Refuse new connections and cut the live ones: the database is unreachable, as after a crash.
        await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            response = await client.get("/readyz")
        finally:
            await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "checks": {"models": True, "database": False}}
    assert (await client.get("/readyz")).status_code == 200  # and it recovers when the database is back


async def test_openapi_describes_the_chat_endpoint(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/chat/completions" in spec["paths"]
    assert "/v1/models" in spec["paths"]
