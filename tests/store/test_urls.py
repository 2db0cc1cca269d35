from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from penstock.store.urls import mask_password, with_database


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:s3cret@db.internal:5432/penstock", "postgresql://app:***@db.internal:5432/penstock"),
        ("postgresql://app@db/penstock", "postgresql://app@db/penstock"),
        ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:@/postgres?host=/tmp/pg"),
        ("postgresql://app@db/penstock?password=s3cret", "postgresql://app@db/penstock?password=***"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
    ],
)
def test_mask_password_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_password(url) == masked


def test_mask_password_handles_keyword_connection_strings() -> None:
    masked = mask_password("host=db user=app password=s3cret dbname=penstock")
    assert conninfo_to_dict(masked) == {"host": "db", "user": "app", "password": "***", "dbname": "penstock"}


def test_mask_password_never_raises_on_garbage() -> None:
    assert "s3cret" not in mask_password("host=db password='s3cret")
    assert "s3cret" not in mask_password("postgresql://app:s3cret@[::1/x")


def test_with_database_replaces_the_database_and_keeps_the_rest() -> None:
    url = "postgresql://postgres:@/postgres?host=/tmp/pg"
    assert with_database(url, "t_1") == "postgresql://postgres:@/t_1?host=/tmp/pg"
    assert "dbname=t_1" in with_database("host=db dbname=penstock", "t_1")
