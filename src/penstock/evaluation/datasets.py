"""Labeled retrieval sets as JSONL: one object per line, a document or a query.

{"type": "document", "id": "ls.1", "text": "...", "format": "txt"}
{"type": "query", "id": "q1", "text": "list directory contents", "relevant": ["ls.1"]}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from penstock.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Query:
    id: str
    text: str
    relevant: frozenset[str]


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    documents: tuple[Document, ...]
    queries: tuple[Query, ...]


def read_jsonl(path: Path) -> Dataset:
    documents, queries = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if item["type"] == "document":
                documents.append(Document(str(item["id"]), item["text"]))
            else:
                queries.append(Query(str(item["id"]), item["text"], frozenset(map(str, item["relevant"]))))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number}: not a dataset line ({exc})") from exc
    return Dataset(path.stem, tuple(documents), tuple(queries))


def write_jsonl(dataset: Dataset, path: Path) -> None:
    lines: Iterable[dict[str, object]] = [
        *({"type": "document", "id": d.id, "text": d.text} for d in dataset.documents),
        *({"type": "query", "id": q.id, "text": q.text, "relevant": sorted(q.relevant)} for q in dataset.queries),
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
