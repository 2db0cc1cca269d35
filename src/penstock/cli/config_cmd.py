"""`penstock config show`: the effective configuration, secrets masked."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from penstock.cli.options import ConfigOption, settings_or_exit

app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@app.command("show")
def show(config: Path | None = ConfigOption) -> None:
    """Print the effective configuration (file, environment and defaults) with secrets masked."""
    settings = settings_or_exit(config)
    typer.echo(yaml.safe_dump(settings.masked(), sort_keys=False), nl=False)
