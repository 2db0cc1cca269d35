"""`penstock tenants create|list` and `penstock keys create|list|revoke`, straight against the database.

They open the database the server uses (DATABASE_URL, or the embedded one under PENSTOCK_HOME, shared
with a running server); a running server's key cache picks the change up within a second.
`keys create` prints the key alone on stdout, so `KEY=$(penstock keys create --tenant t)` works.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import typer
from pydantic import ValidationError

from penstock.cli.options import ConfigOption, err_console, run_or_exit, settings_or_exit
from penstock.identity import KeyScopes, RateLimits, Tenant, TenantLimits
from penstock.store.keys import KeyStore
from penstock.store.runtime import DatabaseRuntime

tenants_app = typer.Typer(help="Tenants: who keys belong to, with their limits and budgets.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
T = TypeVar("T")


def run_on_store(config: Path | None, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run `action` against the configured database; a failure is one message and exit code 1."""
    settings = settings_or_exit(config)

    async def main() -> T:
        async with DatabaseRuntime(settings.database_url, settings.data_dir) as database:
            return await action(KeyStore(database))

    return run_or_exit(main())


@tenants_app.command("create")
def create_tenant(
    tenant_id: str = typer.Argument(..., help="Tenant id: letters, digits, - and _."),
    name: str = typer.Option("", help="A readable name."),
    rpm: int | None = typer.Option(None, min=1, help="Requests per minute, all the tenant's keys together."),
    tpm: int | None = typer.Option(None, min=1, help="Tokens per minute, all the tenant's keys together."),
    max_concurrent: int | None = typer.Option(None, min=1, help="Requests in flight at once."),
    daily_tokens: int | None = typer.Option(None, min=1, help="Token budget per UTC day."),
    monthly_tokens: int | None = typer.Option(None, min=1, help="Token budget per calendar month."),
    daily_cost: float | None = typer.Option(None, min=0, help="Cost budget per UTC day."),
    monthly_cost: float | None = typer.Option(None, min=0, help="Cost budget per calendar month."),
    batch: bool = typer.Option(False, help="Every request runs in the batch tier: behind people, shed first."),
    config: Path | None = ConfigOption,
) -> None:
    """Create a tenant."""
    limits = dict(rpm=rpm, tpm=tpm, max_concurrent=max_concurrent, daily_tokens=daily_tokens)
    limits |= dict(monthly_tokens=monthly_tokens, daily_cost=daily_cost, monthly_cost=monthly_cost)
    limits |= dict(max_priority="batch" if batch else "interactive")
    tenant = _valid(lambda: Tenant(id=tenant_id, name=name, limits=TenantLimits(**limits)))
    created = run_on_store(config, lambda store: store.create_tenant(tenant))
    typer.echo(created.id)


@tenants_app.command("list")
def list_tenants(config: Path | None = ConfigOption) -> None:
    """One JSON object per line for each tenant."""
    for tenant in run_on_store(config, KeyStore.list_tenants):
        typer.echo(tenant.model_dump_json())


@keys_app.command("create")
def create_key(
    tenant: str = typer.Option(..., "--tenant", help="The tenant the key belongs to."),
    name: str = typer.Option("", help="A readable name."),
    rpm: int | None = typer.Option(None, min=1, help="Requests per minute for this key."),
    tpm: int | None = typer.Option(None, min=1, help="Tokens per minute for this key (prompt + max_tokens)."),
    max_concurrent: int | None = typer.Option(None, min=1, help="Requests in flight at once for this key."),
    models: str | None = typer.Option(None, help="Comma-separated models the key may use (default: all)."),
    tools: str | None = typer.Option(None, help="Comma-separated tools the key may use (default: all)."),
    collections: str | None = typer.Option(None, help="Comma-separated retrieval collections (default: all)."),
    user: str | None = typer.Option(None, help="The end user it reads documents as (default: given per request)."),
    groups: str | None = typer.Option(None, help="Comma-separated groups it reads documents as (default: any)."),
    max_tokens: int | None = typer.Option(None, min=1, help="Cap on max_tokens per request."),
    admin: bool = typer.Option(False, "--admin", help="May use the admin API, within its own tenant."),
    platform: bool = typer.Option(
        False, "--platform", help="An admin of every tenant, as the master key is (tenants, usage, review, dashboard)."
    ),
    expires_at: datetime | None = typer.Option(None, help="When the key stops working (ISO 8601, UTC if no zone)."),
    config: Path | None = ConfigOption,
) -> None:
    """Create a key and print it, alone, on stdout: it is shown this once and stored only as a hash."""
    limits = RateLimits(rpm=rpm, tpm=tpm, max_concurrent=max_concurrent)
    scopes = _valid(
        lambda: KeyScopes(
            models=_names(models),
            tools=_names(tools),
            collections=_names(collections),
            user=user,
            groups=_names(groups),
            max_tokens=max_tokens,
            admin=admin,
            platform=platform,
            limits=limits,
        )
    )
    expires = expires_at.replace(tzinfo=UTC) if expires_at and expires_at.tzinfo is None else expires_at
    created = run_on_store(config, lambda store: store.create_key(tenant, scopes, name=name, expires_at=expires))
    err_console.print(f"created {created.key.id} for tenant {tenant}; the key is not shown again", highlight=False)
    typer.echo(created.secret)


@keys_app.command("list")
def list_keys(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's keys."),
    config: Path | None = ConfigOption,
) -> None:
    """One JSON object per line for each key (never the key itself)."""
    for key in run_on_store(config, lambda store: store.list_keys(tenant)):
        typer.echo(key.model_dump_json())


@keys_app.command("revoke")
def revoke_key(
    key_id: str = typer.Argument(..., help="The key's id (key_…)."), config: Path | None = ConfigOption
) -> None:
    """Revoke a key: every replica refuses it within a second."""
    key = run_on_store(config, lambda store: store.revoke_key(key_id))
    typer.echo(json.dumps({"id": key.id, "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}))


def _names(csv: str | None) -> tuple[str, ...] | None:
    return None if csv is None else tuple(n.strip() for n in csv.split(",") if n.strip())


def _valid(build: Callable[[], T]) -> T:
    try:
        return build()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err_console.print(f"[red]error:[/red] {problems}", highlight=False)
        raise typer.Exit(2) from None
