"""`penstock ingest` and `penstock eval retrieval` against a database of the test's own."""

from __future__ import annotations

import json
from pathlib import Path

from penstock.store.database import Database
from penstock.store.documents import DocumentStore, Scope
from penstock.types import Principal
from tests.cli.conftest import penstock, penstock_env


def write_docs(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "guide.md").write_text("# Install\nRun the installer and accept the licence.\n# Use\nOpen the app.")
    (folder / "sub" / "page.html").write_text("<h1>Billing</h1><p>Invoices are sent monthly.</p><script>x()</script>")
    (folder / "notes.txt").write_text("Support answers within one business day.")
    (folder / "image.png").write_bytes(b"\x89PNG")  # not a document format: left alone


async def test_ingest_walks_folders_skips_unchanged_and_the_chunks_are_searchable(
    tmp_path: Path, database_url: str, database: Database
) -> None:
    write_docs(tmp_path / "docs")
    env = penstock_env(tmp_path / "home", DATABASE_URL=database_url)
    args = ("ingest", str(tmp_path / "docs"), "--collection", "kb", "--tenant", "acme", "--acl", "staff")
    first = penstock(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "3 documents (3 created, 0 updated, 0 unchanged), 4 chunks"
    assert "docs/s" in first.stderr and "chunks/s" in first.stderr  # the progress bar's rates
    again = penstock(*args, env=env)
    assert again.stdout.strip() == "3 documents (0 created, 0 updated, 3 unchanged), 0 chunks"
    store = DocumentStore(database)
    staff = Scope(Principal("acme", groups=("staff",)), ("kb",))
    assert [h.source.rsplit("/", 1)[-1] for h in await store.sparse(staff, "invoices", 5)] == ["page.html"]
    assert await store.sparse(Scope(Principal("acme"), ("kb",)), "invoices", 5) == []  # not staff: nothing


def test_eval_retrieval_scores_every_method_on_a_jsonl_set(tmp_path: Path, database_url: str) -> None:
    topics = ["baking bread with sourdough", "repairing a bicycle puncture", "pruning apple trees", "tuning a guitar"]
    lines = [{"type": "document", "id": f"d{i}", "text": f"A guide to {t}. " * 5} for i, t in enumerate(topics)]
    lines += [{"type": "query", "id": f"q{i}", "text": t, "relevant": [f"d{i}"]} for i, t in enumerate(topics)]
    dataset = tmp_path / "set.jsonl"
    dataset.write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = penstock_env(tmp_path / "home", DATABASE_URL=database_url)
    result = penstock("eval", "retrieval", "--dataset", str(dataset), "--json", env=env)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert (scores["queries"], scores["documents"]) == (4, 4)
    for method in ("sparse", "dense", "hybrid", "hybrid_rerank"):
        assert set(scores[method]) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}
        assert scores[method]["recall@10"] == 1.0  # four distinct topics: every method finds each
