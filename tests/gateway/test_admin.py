"""A tenant's admin key acts within its own tenant; tenants and anything across them need a platform admin.

The probes of audit finding 2: with tenant alpha's admin key, beta's keys were listed, made (an admin key
for beta, which then read beta's documents), revoked, and beta's usage and review sample were read.
"""

from __future__ import annotations

import httpx

from tests.gateway.conftest import MODEL
from tests.gateway.test_errors import assert_openai_error
from tests.gateway.test_keys import as_key, new_key

DOCUMENT = {"documents": [{"source": "plan.md", "text": "# Plan\nBeta's secret launch plan for the winter."}]}


async def test_a_tenant_admin_reads_and_writes_only_its_own_tenants_keys(client: httpx.AsyncClient) -> None:
    alpha, beta = await new_key(client, "alpha", admin=True), await new_key(client, "beta")
    as_alpha = as_key(alpha)
    listed = await client.get("/admin/keys", headers=as_alpha)
    assert {k["tenant"] for k in listed.json()["data"]} == {"alpha"}
    assert_openai_error(await client.get("/admin/keys", params={"tenant": "beta"}, headers=as_alpha), 403)
    made = await client.post("/admin/keys", json={"tenant": "beta", "admin": True}, headers=as_alpha)
    assert_openai_error(made, 403)
    assert_openai_error(await client.delete(f"/admin/keys/{beta['id']}", headers=as_alpha), 404)
    assert (await client.get("/v1/models", headers=as_key(beta))).status_code == 200  # still works
    own = await client.post("/admin/keys", json={"tenant": "alpha", "name": "ci"}, headers=as_alpha)
    assert own.status_code == 201 and own.json()["tenant"] == "alpha"
    assert (await client.delete(f"/admin/keys/{own.json()['id']}", headers=as_alpha)).status_code == 200


async def test_tenants_and_platform_keys_need_a_platform_admin(client: httpx.AsyncClient) -> None:
    alpha = await new_key(client, "alpha", admin=True)
    await new_key(client, "beta")
    as_alpha = as_key(alpha)
    assert_openai_error(await client.post("/admin/tenants", json={"id": "gamma"}, headers=as_alpha), 403)
    assert [t["id"] for t in (await client.get("/admin/tenants", headers=as_alpha)).json()["data"]] == ["alpha"]
    widened = await client.post("/admin/keys", json={"tenant": "alpha", "platform": True}, headers=as_alpha)
    assert_openai_error(widened, 403)

    platform = await new_key(client, "alpha", platform=True)  # made by the master key
    as_platform = as_key(platform)
    assert (await client.post("/admin/tenants", json={"id": "gamma"}, headers=as_platform)).status_code == 201
    everyone = (await client.get("/admin/tenants", headers=as_platform)).json()["data"]
    assert {t["id"] for t in everyone} == {"alpha", "beta", "gamma"}
    for_beta = await client.post("/admin/keys", json={"tenant": "beta"}, headers=as_platform)
    assert for_beta.status_code == 201 and for_beta.json()["tenant"] == "beta"


async def test_a_tenant_admin_cannot_read_another_tenants_documents_usage_or_dashboard(
    client: httpx.AsyncClient,
) -> None:
    alpha = await new_key(client, "alpha", admin=True)
    await new_key(client, "beta")
    assert (await client.post("/v1/collections/docs/documents", params={"tenant": "beta"}, json=DOCUMENT)).is_success
    as_alpha = as_key(alpha)
    listed = await client.get("/v1/collections/docs/documents", params={"tenant": "beta"}, headers=as_alpha)
    assert_openai_error(listed, 403)
    written = await client.post(
        "/v1/collections/docs/documents", params={"tenant": "beta"}, json=DOCUMENT, headers=as_alpha
    )
    assert_openai_error(written, 403)
    own = await client.get("/v1/collections/docs/documents", headers=as_alpha)
    assert own.status_code == 200 and own.json() == []  # its own tenant's collection: empty
    assert_openai_error(await client.get("/v1/usage", params={"tenant": "beta"}, headers=as_alpha), 403)
    assert (await client.get("/v1/usage", headers=as_alpha)).json()["tenant"] == "alpha"  # not "all"
    assert_openai_error(await client.get("/dashboard/data", headers=as_alpha), 403)
    assert (await client.get("/dashboard/data")).status_code == 200  # the master key


async def test_a_tenant_admin_makes_keys_no_wider_than_itself(client: httpx.AsyncClient) -> None:
    """Like a pinned principal (audit finding 3), a limited admin key could otherwise mint an unlimited one."""
    limited = await new_key(client, "alpha", admin=True, models=[MODEL], max_tokens=100, rpm=10, user="alice")
    as_limited = as_key(limited)
    within = {"tenant": "alpha", "models": [MODEL], "max_tokens": 50, "rpm": 5, "user": "alice", "groups": []}
    for wider, param in [
        ({"models": None}, "models"),
        ({"max_tokens": 200}, "max_tokens"),
        ({"rpm": None}, "rpm"),
        ({"user": None, "groups": None}, "user"),
        ({"groups": ["hr"]}, "user"),
    ]:
        response = await client.post("/admin/keys", json={**within, **wider}, headers=as_limited)
        assert_openai_error(response, 403, param=param)
    made = await client.post("/admin/keys", json=within, headers=as_limited)
    assert made.status_code == 201, made.text
    unlimited_admin = await new_key(client, "alpha", admin=True)
    assert (await client.post("/admin/keys", json={"tenant": "alpha"}, headers=as_key(unlimited_admin))).is_success
