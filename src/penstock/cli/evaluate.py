"""`penstock eval retrieval --dataset manpages|FILE [--json]`: retrieval quality, method by method."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from penstock.cli.options import ConfigOption, PhaseBars, run_or_exit, settings_or_exit

app = typer.Typer(help="Offline evaluation on labeled data.", no_args_is_help=True)


@app.command("retrieval")
def retrieval(
    dataset: str = typer.Option(
        "manpages", help="'manpages' (built from this machine's manual pages) or a JSONL file."
    ),
    limit: int = typer.Option(2000, min=10, help="Pages to sample for the manpages set."),
    seed: int = typer.Option(0, help="Seed of the manpages sample."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object on stdout; progress on stderr."),
    config: Path | None = ConfigOption,
) -> None:
    """Recall@1/5/10, MRR@10 and nDCG@10 for sparse, dense, hybrid and hybrid+rerank."""
    from penstock.evaluation import manpages
    from penstock.evaluation.datasets import read_jsonl
    from penstock.evaluation.retrieval_eval import EvalSetup, evaluate
    from penstock.retrieval.chunker import Chunker
    from penstock.retrieval.embedder import configured_embedder  # late: torch is slow to import
    from penstock.retrieval.ingest import Ingestor
    from penstock.retrieval.query_cache import QueryEmbeddings
    from penstock.retrieval.reranker import MaxSimReranker
    from penstock.retrieval.retriever import Retriever, RetrieverConfig
    from penstock.retrieval.token_cache import TokenVectorCache
    from penstock.store.documents import DocumentStore
    from penstock.store.runtime import DatabaseRuntime

    settings = settings_or_exit(config)
    data = manpages.build(limit, seed) if dataset == "manpages" else read_jsonl(Path(dataset))
    embedder = configured_embedder(settings, os.cpu_count() or 1)
    # Room for every chunk's token vectors: ingestion leaves them, so reranking needs no model pass.
    reranker = MaxSimReranker(embedder, TokenVectorCache(8 * 2**30))

    async def main() -> dict[str, object]:
        async with DatabaseRuntime(settings.database_url, settings.data_dir) as database:
            store = DocumentStore(database)
            retriever = Retriever(store, QueryEmbeddings(embedder), reranker, RetrieverConfig(candidates=50))
            ingestor = Ingestor(store, embedder, Chunker(embedder.tokenizer), reranker.cache)
            setup = EvalSetup(store, ingestor, retriever, reranker)
            with PhaseBars() as bar:
                return await evaluate(data, setup, bar.update)

    try:
        result = run_or_exit(main())
    finally:
        reranker.close()
        embedder.close()
    if json_output:
        typer.echo(json.dumps(result))
    else:
        _table(result)


def _table(result: dict[str, object]) -> None:
    table = Table(title=f"retrieval: {result['queries']} queries over {result['documents']} documents")
    metrics = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")
    table.add_column("method")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for method in ("sparse", "dense", "hybrid", "hybrid_rerank"):
        row = result[method]
        assert isinstance(row, dict)
        table.add_row(method, *(f"{row[m]:.3f}" for m in metrics))
    Console().print(table)
    Console().print(f"median latency per query (ms): {result.get('latency_ms')}")
