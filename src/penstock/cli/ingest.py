"""`penstock ingest PATH… --collection C --tenant T`: files and folders into a collection, with progress.

Writes straight to the database the server uses (as `penstock keys` does); a running server searches
the new chunks at once. Folders are walked for the formats the parsers know.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from penstock.cli.options import ConfigOption, err_console, run_or_exit, settings_or_exit
from penstock.retrieval.chunker import Chunker
from penstock.retrieval.embedder import configured_embedder
from penstock.retrieval.ingest import IncomingDocument, Ingested, Ingestor
from penstock.retrieval.parsers import SUFFIXES, format_of
from penstock.store.documents import DocumentStore
from penstock.store.runtime import DatabaseRuntime
from penstock.types import Acl


def ingest(
    paths: list[Path] = typer.Argument(..., exists=True, help="Files, or folders to walk."),
    collection: str = typer.Option(..., help="The collection to add them to."),
    tenant: str = typer.Option("default", help="The tenant that owns them."),
    acl: str | None = typer.Option(None, help="Comma-separated groups that may read them (default: the tenant)."),
    users: str | None = typer.Option(None, help="Comma-separated users that may read them."),
    config: Path | None = ConfigOption,
) -> None:
    """Parse, chunk, embed and store documents (txt, md, html, pdf); unchanged ones are skipped."""
    settings = settings_or_exit(config)
    files = sorted(_files(paths))
    if not files:
        err_console.print(f"[red]error:[/red] no {', '.join(sorted(SUFFIXES))} files under the given paths")
        raise typer.Exit(1)
    access = Acl(_names(acl), _names(users))
    embedder = configured_embedder(settings, os.cpu_count() or 1)

    async def main() -> list[Ingested]:
        async with DatabaseRuntime(settings.database_url, settings.data_dir) as database:
            ingestor = Ingestor(DocumentStore(database), embedder, Chunker(embedder.tokenizer))
            return await _ingest_all(ingestor, tenant, collection, files, access)

    try:
        results = run_or_exit(main())
    finally:
        embedder.close()
    counts = {status: sum(r.status == status for r in results) for status in ("created", "updated", "unchanged")}
    chunks = sum(r.chunks for r in results)
    typer.echo(f"{len(results)} documents ({', '.join(f'{n} {s}' for s, n in counts.items())}), {chunks} chunks")


async def _ingest_all(ingestor: Ingestor, tenant: str, collection: str, files: list[Path], acl: Acl) -> list[Ingested]:
    results: list[Ingested] = []
    started, chunks = time.monotonic(), 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"))
    with Progress(*columns, TimeElapsedColumn(), console=err_console) as progress:
        task = progress.add_task("ingesting", total=len(files), rate="")
        for path in files:
            document = IncomingDocument(str(path), path.read_bytes(), format_of(path.name), acl)
            results.append(await ingestor.ingest(tenant, collection, document))
            chunks += results[-1].chunks
            elapsed = max(time.monotonic() - started, 1e-9)
            rate = f"{len(results) / elapsed:.1f} docs/s, {chunks / elapsed:.1f} chunks/s"
            progress.update(task, advance=1, rate=rate)
    return results


def _files(paths: list[Path]) -> set[Path]:
    found = set()
    for path in paths:
        candidates = path.rglob("*") if path.is_dir() else [path]
        found |= {p for p in candidates if p.is_file() and p.suffix.lower() in SUFFIXES}
    return found


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(sorted({v.strip() for v in (value or "").split(",") if v.strip()}))
