"""`penstock serve` (the whole service in one process) and `penstock worker` (the engine alone)."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from types import FrameType

import typer
import uvicorn

from penstock.cli.options import ConfigOption, err_console, settings_or_exit
from penstock.gateway.draining import Draining
from penstock.gateway.host_check import is_loopback_host
from penstock.gateway.http_server import server_config
from penstock.observability.logging import configure_logging

HostOption = typer.Option(None, help="Address to listen on (default from config: 127.0.0.1).")
PortOption = typer.Option(None, min=0, max=65535, help="Port (default from config: 8000).")


def serve(host: str | None = HostOption, port: int | None = PortOption, config: Path | None = ConfigOption) -> None:
    """Start the OpenAI-compatible API server with its database (embedded unless DATABASE_URL is set)."""
    _run(config, host, port, with_database=True)


def worker(host: str | None = HostOption, port: int | None = PortOption, config: Path | None = ConfigOption) -> None:
    """Serve the inference engine alone over the OpenAI API, for a gateway to drive (as it would vLLM)."""
    _run(config, host, port, with_database=False)


def _run(config: Path | None, host: str | None, port: int | None, *, with_database: bool) -> None:
    settings = settings_or_exit(config)
    settings = settings.model_copy(update={"host": host or settings.host, "port": port or settings.port})
    if settings.admin_key is None and not is_loopback_host(settings.host.encode()):
        err_console.print(
            f"[red]error:[/red] refusing to listen on {settings.host} without a key; set PENSTOCK_ADMIN_KEY",
            highlight=False,
        )
        raise typer.Exit(2)
    configure_logging(settings.log_level)
    from penstock.app import build_app  # imported late: it pulls in torch, which `--help` need not wait for

    app = build_app(settings, with_database=with_database)
    with suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled; it was handled
        DrainingServer(server_config(app, settings), app.state.draining, settings.policy.shutdown_grace_s).run()


class DrainingServer(uvicorn.Server):
    """uvicorn, telling open streams when the grace period they have to finish in began."""

    def __init__(self, config: uvicorn.Config, draining: Draining, grace_s: float) -> None:
        super().__init__(config)
        self._draining, self._grace_s = draining, grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._draining.begin(self._grace_s)
        super().handle_exit(sig, frame)
