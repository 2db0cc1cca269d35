"""`penstock review sample`: a random draw from the review sample (redacted prompts and completions)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from penstock.cli.options import ConfigOption, run_or_exit, settings_or_exit
from penstock.store.review import ReviewSample, ReviewStore
from penstock.store.runtime import DatabaseRuntime

app = typer.Typer(help="The review sample: prompts and completions kept, redacted, for people to read.")


@app.command("sample")
def sample(
    limit: int = typer.Option(10, min=1, max=1000, help="How many to draw."),
    tenant: str | None = typer.Option(None, help="One tenant's requests only."),
    days: int | None = typer.Option(None, min=1, help="Only requests of the last N days."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per line on stdout."),
    config: Path | None = ConfigOption,
) -> None:
    """Draw samples at random; they were redacted before they were stored."""
    settings = settings_or_exit(config)
    since = datetime.now(UTC) - timedelta(days=days) if days else None

    async def main() -> list[ReviewSample]:
        async with DatabaseRuntime(settings.database_url, settings.data_dir) as database:
            return await ReviewStore(database).sample(limit, tenant, since)

    samples = run_or_exit(main())
    console = Console()
    for s in samples:
        if json_output:
            created = s.created_at.isoformat() if s.created_at else None
            typer.echo(json.dumps({**_fields(s), "created_at": created}))
            continue
        prompt = "\n".join(f"[bold]{escape(m['role'])}[/bold]: {escape(m['content'])}" for m in s.prompt)
        title = f"{s.request_id} · {s.tenant} · {s.deployment or '-'} · {s.created_at:%Y-%m-%d %H:%M}"
        console.print(Panel(f"{prompt}\n[bold]answer[/bold]: {escape(s.completion)}", title=title, highlight=False))
    if not samples and not json_output:
        console.print("no samples (is observability.review_sample_rate above 0?)")


def _fields(s: ReviewSample) -> dict[str, object]:
    return {
        "request_id": s.request_id,
        "tenant": s.tenant,
        "deployment": s.deployment,
        "route": s.route,
        "prompt": s.prompt,
        "completion": s.completion,
    }
