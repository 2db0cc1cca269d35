"""/metrics labels series by tenant, so behind a master key it needs a token (audit finding 4: it needed none)."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from penstock.app import build_app
from penstock.config import ObservabilityConfig, Settings
from penstock.engine.served import ServedModel
from tests.gateway.conftest import ADMIN_KEY
from tests.gateway.test_errors import assert_openai_error
from tests.gateway.test_keys import as_key, new_key
from tests.gateway.test_usage import ONE_TOKEN

SCRAPE_TOKEN = "scrape-token-0123456789"


async def test_metrics_need_the_scrape_token_the_master_key_or_a_platform_admin(
    database_url: str, served: dict[str, ServedModel], tmp_path: Path
) -> None:
    observability = ObservabilityConfig(metrics_token=SCRAPE_TOKEN)
    settings = Settings(home=tmp_path, admin_key=ADMIN_KEY, database_url=database_url, observability=observability)
    app = build_app(settings, served, CollectorRegistry())
    transport, master = httpx.ASGITransport(app=app), {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://penstock", headers=master) as client,
    ):
        tenant_admin, platform = await new_key(client, "acme", admin=True), await new_key(client, "ops", platform=True)
        await client.post("/v1/chat/completions", json=ONE_TOKEN, headers=as_key(tenant_admin))
        anonymous = await client.get("/metrics", headers={"Authorization": ""})
        by_tenant_admin = await client.get("/metrics", headers=as_key(tenant_admin))
        by_token = await client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
        by_platform = await client.get("/metrics", headers=as_key(platform))
        by_master = await client.get("/metrics")
    assert_openai_error(anonymous, 401)
    assert_openai_error(by_tenant_admin, 403)
    for scraped in (by_token, by_platform, by_master):
        assert scraped.status_code == 200 and 'tenant="acme"' in scraped.text
