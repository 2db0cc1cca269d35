"""`penstock review sample` draws from the review store of a database of the test's own."""

from __future__ import annotations

import json
from pathlib import Path

from penstock.store.database import Database
from penstock.store.review import ReviewSample, ReviewStore
from tests.cli.conftest import penstock, penstock_env


async def test_review_sample_draws_at_random_within_a_tenant(
    tmp_path: Path, database_url: str, database: Database
) -> None:
    store = ReviewStore(database)
    samples = [
        ReviewSample(
            f"r{i}", "acme" if i < 4 else "globex", "small", "chat.completions",
            [{"role": "user", "content": f"question {i} from [EMAIL]"}], f"answer {i}",
        )
        for i in range(5)
    ]  # fmt: skip
    await store.insert(samples)
    env = penstock_env(tmp_path / "home", DATABASE_URL=database_url)
    result = penstock("review", "sample", "--limit", "3", "--tenant", "acme", "--json", env=env)
    assert result.returncode == 0, result.stderr
    drawn = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(drawn) == 3 and {d["tenant"] for d in drawn} == {"acme"}
    assert all(d["prompt"][0]["content"].endswith("[EMAIL]") and d["completion"].startswith("answer") for d in drawn)
    shown = penstock("review", "sample", env=env)
    assert shown.returncode == 0 and "question" in shown.stdout and "[EMAIL]" in shown.stdout
