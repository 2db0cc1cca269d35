"""`penstock usage report`: use and cost by tenant, day and model, and quality by deployment, from the ledger."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from penstock.cli.options import ConfigOption, run_or_exit, settings_or_exit
from penstock.store.ledger import LedgerStore, Quality, UsageLine
from penstock.store.runtime import DatabaseRuntime

app = typer.Typer(help="Usage and cost from the ledger.", no_args_is_help=True)


@app.command("report")
def report(
    tenant: str | None = typer.Option(None, help="One tenant (default: every tenant)."),
    days: int = typer.Option(30, min=1, max=366, help="Days up to and including --end."),
    end: datetime | None = typer.Option(None, formats=["%Y-%m-%d"], help="Last day (UTC), default today."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    config: Path | None = ConfigOption,
) -> None:
    """Requests, errors, tokens and cost per tenant, UTC day and deployment; quality from feedback."""
    settings = settings_or_exit(config)
    last = end.date() if end else datetime.now(UTC).date()
    first = last - timedelta(days=days - 1)
    since, until = (datetime.combine(d, time(), tzinfo=UTC) for d in (first, last + timedelta(days=1)))

    async def main() -> tuple[list[UsageLine], list[Quality]]:
        async with DatabaseRuntime(settings.database_url, settings.data_dir) as database:
            ledger = LedgerStore(database)
            return await ledger.usage(tenant, since, until), await ledger.quality(tenant, since, until)

    lines, quality = run_or_exit(main())
    if json_output:
        data = [{**asdict(line), "day": line.day.isoformat()} for line in lines]
        body = {"tenant": tenant, "start": first.isoformat(), "end": last.isoformat(), "data": data}
        typer.echo(json.dumps({**body, "quality": [q.to_dict() for q in quality]}))
        return
    _print(lines, quality, first, last)


def _print(lines: list[UsageLine], quality: list[Quality], first: date, last: date) -> None:
    usage = Table(title=f"usage {first} to {last} (UTC)")
    for name in ("tenant", "day", "deployment", "requests", "errors", "tokens in", "tokens out", "cost"):
        usage.add_column(name, justify="right" if name not in ("tenant", "deployment") else "left")
    for u in lines:
        usage.add_row(
            u.tenant, str(u.day), u.deployment or "-", str(u.requests), str(u.errors),
            str(u.prompt_tokens), str(u.completion_tokens), f"{u.cost:.6f}",
        )  # fmt: skip
    console = Console()
    console.print(usage)
    if not quality:
        return
    table = Table(title="quality by deployment (answered requests)")
    columns = ("requests", "rated", "task_success_rate", "escalation_rate", "negative_feedback_rate")
    for name in ("deployment", *columns, "cost_per_successful_request"):
        table.add_column(name.replace("_", " "))
    for q in quality:
        row = q.to_dict()
        table.add_row(*(str(row[name]) for name in ("deployment", *columns, "cost_per_successful_request")))
    console.print(table)
