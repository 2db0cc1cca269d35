import httpx

from penstock.config import DEFAULT_EMBEDDING_MODEL as EMBEDDING_MODEL
from tests.gateway.conftest import MODEL
from tests.helpers import database_refusing


async def test_models_lists_the_deployments_and_the_embedding_model(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL, EMBEDDING_MODEL]
    assert body["data"][0]["object"] == "model"
    assert (await client.get(f"/v1/models/{EMBEDDING_MODEL}")).json()["id"] == EMBEDDING_MODEL


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
    async with database_refusing(postgres_server, database_url):
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "checks": {"models": True, "database": False}}
    assert (await client.get("/readyz")).status_code == 200  # and it recovers when the database is back


async def test_openapi_describes_the_chat_endpoint(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/chat/completions" in spec["paths"]
    assert "/v1/models" in spec["paths"]
