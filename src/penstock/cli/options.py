"""Options and helpers shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from penstock.config import Settings, load_settings
from penstock.errors import ConfigError

ConfigOption = typer.Option(None, "--config", "-c", help="YAML file with deployments, tenants and policies.")
err_console = Console(stderr=True)


def settings_or_exit(config: Path | None) -> Settings:
    """Load settings; an invalid configuration is one clear message and exit code 2."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
