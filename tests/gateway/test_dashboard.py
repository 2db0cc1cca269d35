"""The admin dashboard: its data (admin keys only), its page drawn by a real headless Chromium, and the
Grafana dashboard's PromQL checked against the series the app exports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from penstock.app import build_app
from penstock.config import DeploymentConfig, ObservabilityConfig, Settings, UpstreamConfig
from penstock.engine.served import ServedModel
from penstock.observability.dashboard import CHARTS
from tests.gateway.conftest import ADMIN_KEY, MODEL
from tests.gateway.test_errors import assert_openai_error
from tests.gateway.test_keys import as_key, new_key
from tests.helpers import free_port
from tests.router.fault_upstream import running_upstream

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 3, "temperature": 0}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHART_NAMES = {chart.name for chart in CHARTS}
GRAFANA = Path(__file__).parents[2] / "deploy" / "grafana" / "penstock.json"


def priced(home: Path, database_url: str, interval_s: float, upstream: str | None = None) -> Settings:
    """Settings as the conftest's, with prices, so that cost per tenant has something to chart, a short
    dashboard interval, so that the charts fill quickly, and a remote deployment on `upstream` if given,
    so that the upstream replicas' charts have one."""
    deployments = [DeploymentConfig(name=MODEL, input_cost_per_1k=0.5, output_cost_per_1k=1.5)]
    if upstream is not None:
        deployments.append(DeploymentConfig(name="remote", backend="openai", upstream=UpstreamConfig(urls=[upstream])))
    observability = ObservabilityConfig(dashboard_interval_s=interval_s)
    return Settings(
        home=home, admin_key=ADMIN_KEY, database_url=database_url, deployments=deployments, observability=observability
    )


@pytest.fixture
async def app(
    database_url: str, served: dict[str, ServedModel], registry: CollectorRegistry, tmp_path: Path
) -> AsyncIterator[FastAPI]:
    app = build_app(priced(tmp_path, database_url, 0.05), served, registry)
    async with app.router.lifespan_context(app):
        yield app


async def charted_since(client: httpx.AsyncClient, since: float, timeout_s: float = 10.0) -> dict[str, Any]:
    """/dashboard/data once it has a point taken after `since` (so it counts what happened before)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get("/dashboard/data", headers=ADMIN)
        assert response.status_code == 200, response.text
        data = response.json()
        if data["times"] and data["times"][-1] > since:
            return data
        assert time.monotonic() < deadline, "the dashboard took no snapshot"
        await asyncio.sleep(0.05)


def peak(values: list[float | None]) -> float:
    return max((v for v in values if v is not None), default=0.0)


async def test_dashboard_data_is_for_admin_keys_only(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/dashboard/data", headers={"Authorization": ""}), 401)
    tenant_key = await new_key(client)
    error = assert_openai_error(await client.get("/dashboard/data", headers=as_key(tenant_key)), 403)
    assert error["type"] == "permission_error"


async def test_the_page_holds_no_data_and_needs_no_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert "/dashboard/data" in response.text and "sessionStorage" in response.text
    assert "<script src" not in response.text and "<link" not in response.text  # nothing fetched from elsewhere


async def test_dashboard_data_charts_the_requests_made(client: httpx.AsyncClient) -> None:
    for body in (CHAT, CHAT, {**CHAT, "model": "no-such-model"}):
        await client.post("/v1/chat/completions", json=body)
    data = await charted_since(client, time.time())
    charts = {chart["name"]: chart["series"] for chart in data["charts"]}
    assert set(charts) == CHART_NAMES
    for series in charts.values():
        assert all(len(values) == len(data["times"]) for values in series.values())
    assert peak(charts["requests"]["all"]) > 0
    assert peak(charts["errors"]["not ok"]) > 0  # the unknown model was refused
    assert peak(charts["deployments"][MODEL]) > 0
    assert peak(charts["tokens"][MODEL]) > 0
    assert charts["cost"]["default"][-1] > 0  # the master key's tenant
    assert {"gateway", "prefill", "decode"} <= set(charts["stage_p95"])
    assert charts["stage_p95"]["decode"][-1] >= charts["stage_p50"]["decode"][-1] > 0
    assert MODEL in charts["kv_cache"] and f"{MODEL} waiting" in charts["queue"]


# --- The page in a browser ----------------------------------------------------------------------


@asynccontextmanager
async def serving(app: FastAPI, timeout_s: float = 120.0) -> AsyncIterator[str]:
    """`app` under a real uvicorn on a loopback port, in a thread of its own; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard-test-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped before it started"
            assert time.monotonic() < deadline, f"uvicorn did not start within {timeout_s}s"
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 60)


def dump_dom(chromium: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (virtual time: its 2 s polls come at once)."""
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
    args += [f"--user-data-dir={profile}", "--virtual-time-budget=8000", "--dump-dom", url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


class ChartPoints(HTMLParser):
    """data-chart name → data-series-points, for each chart in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if named.get("data-chart"):
            self.points[str(named["data-chart"])] = int(named.get("data-series-points") or 0)


async def test_the_page_draws_every_chart_in_a_headless_browser(
    database_url: str, served: dict[str, ServedModel], registry: CollectorRegistry, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make chromium` (a step of `make test`)")
    with running_upstream() as upstream:
        parser = await _draw(priced(tmp_path, database_url, 0.2, upstream.url), served, registry, chromium, tmp_path)
    assert set(parser.points) == CHART_NAMES
    assert all(points > 0 for points in parser.points.values()), parser.points


async def _draw(
    settings: Settings, served: dict[str, ServedModel], registry: CollectorRegistry, chromium: str, tmp_path: Path
) -> ChartPoints:
    app = build_app(settings, served, registry)
    async with serving(app) as url:
        async with httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=60) as http:
            for body in (CHAT, CHAT, {**CHAT, "model": "no-such-model"}):
                await http.post("/v1/chat/completions", json=body)
            await charted_since(http, time.time())
        # The key travels in the fragment, which the browser keeps to itself.
        dom = await asyncio.to_thread(dump_dom, chromium, f"{url}/dashboard#key={ADMIN_KEY}", tmp_path / "chromium")
    parser = ChartPoints()
    parser.feed(dom)
    return parser


# --- The Grafana dashboard ----------------------------------------------------------------------

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def exported_names(text: str) -> set[str]:
    """Every series name /metrics shows, declared families without samples yet included."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once label values, matchers, ranges,
    grouping clauses and function calls are taken out."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    return set(re.findall(r"\b[A-Za-z_:][\w:]*\b(?!\s*\()", bare)) - PROMQL_WORDS


def test_metric_names_reads_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{x=~"b.*"}[$__rate_interval]))) / c'
    assert metric_names(expr) == {"a_bucket", "c"}


async def test_the_grafana_dashboard_reads_only_series_the_app_exports(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    exported = exported_names((await client.get("/metrics")).text)
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS" and dashboard["schemaVersion"] >= 39
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for expr in exprs:
        assert metric_names(expr), expr
        assert metric_names(expr) <= exported, (expr, metric_names(expr) - exported)
    for variable in dashboard["templating"]["list"]:
        assert re.fullmatch(r"label_values\((\w+), \w+\)", variable["definition"])[1] in exported  # type: ignore[index]
    assert all(panel["datasource"]["uid"] == "${DS_PROMETHEUS}" for panel in dashboard["panels"])
    stage_quantiles = "sum by (le, stage) (rate(penstock_stage_seconds_bucket"
    assert any(e.startswith("histogram_quantile(") and stage_quantiles in e for e in exprs)
