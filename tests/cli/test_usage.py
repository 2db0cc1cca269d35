"""`penstock usage report` over the ledger of a database of the test's own."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from penstock.store.database import Database
from penstock.store.ledger import LedgerRow, LedgerStore
from tests.cli.conftest import penstock, penstock_env


def row(
    request_id: str, tenant: str, when: datetime, status: str = "ok", tokens: tuple[int, int] = (10, 5)
) -> LedgerRow:
    return LedgerRow(request_id, tenant, "key_1", "chat.completions", status, when, "small", "small", *tokens, 0.25)


async def test_report_sums_by_tenant_day_and_deployment(tmp_path: Path, database_url: str, database: Database) -> None:
    today = datetime.now(UTC).replace(hour=12)
    yesterday = today - timedelta(days=1)
    await LedgerStore(database).insert(
        [
            row("a", "acme", today),
            row("b", "acme", today, tokens=(20, 7)),
            row("c", "acme", today, status="error", tokens=(3, 0)),
            row("d", "acme", yesterday),
            row("e", "globex", today),
            row("f", "acme", today - timedelta(days=40)),  # outside the 30 days
        ]
    )
    env = penstock_env(tmp_path / "home", DATABASE_URL=database_url)
    result = penstock("usage", "report", "--tenant", "acme", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    by_day = {line["day"]: line for line in report["data"]}
    assert set(by_day) == {today.date().isoformat(), yesterday.date().isoformat()}
    now = by_day[today.date().isoformat()]
    assert (now["requests"], now["errors"], now["prompt_tokens"], now["completion_tokens"]) == (3, 1, 33, 12)
    assert now["cost"] == 0.75
    [quality] = report["quality"]
    assert (quality["deployment"], quality["requests"], quality["rated"]) == ("small", 3, 0)
    table = penstock("usage", "report", env=env)  # every tenant, as a table
    assert table.returncode == 0, table.stderr
    assert "globex" in table.stdout and "acme" in table.stdout
