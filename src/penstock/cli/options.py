"""Options and helpers shared by several commands."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from penstock.config import Settings, load_settings
from penstock.errors import ConfigError, PenstockError

ConfigOption = typer.Option(None, "--config", "-c", help="YAML file with deployments, tenants and policies.")
err_console = Console(stderr=True)
T = TypeVar("T")


def run_or_exit(work: Coroutine[Any, Any, T]) -> T:
    """Run a command's async work; a PenstockError is one message and exit code 1."""
    try:
        return asyncio.run(work)
    except PenstockError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from None


def settings_or_exit(config: Path | None) -> Settings:
    """Load settings; an invalid configuration is one clear message and exit code 2."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2) from None


class PhaseBars:
    """Progress bars, one per named phase, updated as (phase, done, total)."""

    def __init__(self) -> None:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self._progress = Progress(*columns, console=err_console)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> PhaseBars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, phase: str, done: int, total: int) -> None:
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task(phase, total=total)
        self._progress.update(self._tasks[phase], completed=done)
