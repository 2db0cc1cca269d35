"""`penstock serve`: the whole service in one process, with the embedded defaults."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import typer
import uvicorn

from penstock.cli.options import ConfigOption, err_console, settings_or_exit
from penstock.observability.logging import configure_logging


def serve(
    host: str | None = typer.Option(None, help="Address to listen on (default from config: 127.0.0.1)."),
    port: int | None = typer.Option(None, min=0, max=65535, help="Port (default from config: 8000)."),
    config: Path | None = ConfigOption,
) -> None:
    """Start the OpenAI-compatible API server."""
    settings = settings_or_exit(config)
    settings = settings.model_copy(update={"host": host or settings.host, "port": port or settings.port})
    if settings.admin_key is None and not _is_loopback(settings.host):
        err_console.print(
            f"[red]error:[/red] refusing to listen on {settings.host} without a key; set PENSTOCK_ADMIN_KEY",
            highlight=False,
        )
        raise typer.Exit(2)
    configure_logging(settings.log_level)
    from penstock.app import build_app  # imported late: it pulls in torch, which `--help` need not wait for

    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
