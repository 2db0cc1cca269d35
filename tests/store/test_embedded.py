from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest

from penstock.errors import DependencyUnavailable
from penstock.store.embedded import EmbeddedPostgres


def _execute(url: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def test_data_survives_a_stop_and_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "home" / "pgdata"
    with EmbeddedPostgres(data_dir) as server:
        _execute(server.url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    assert not (data_dir / "postmaster.pid").exists()

    with EmbeddedPostgres(data_dir) as server:
        assert server.url.endswith(f"?host={data_dir}")
        assert _execute(server.url, "SELECT x FROM kept") == [(42,)]


def test_delete_on_stop_removes_the_data_dir(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pgdata", delete_on_stop=True)
    server.start()
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()
    server.stop()
    server.stop()  # idempotent
    assert not (tmp_path / "pgdata").exists()
    with pytest.raises(RuntimeError):
        _ = server.url


def test_a_server_that_cannot_start_reports_its_log_and_can_be_retried(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    with EmbeddedPostgres(data_dir):
        pass
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\nno_such_setting = 1\n")

    with pytest.raises(DependencyUnavailable, match="no_such_setting"):
        EmbeddedPostgres(data_dir).start()

    conf = (data_dir / "postgresql.conf").read_text()
    (data_dir / "postgresql.conf").write_text(conf.replace("no_such_setting = 1", ""))
    with EmbeddedPostgres(data_dir) as server:  # once the cause is fixed, a retry in the same process works
        assert _execute(server.url, "SELECT 1") == [(1,)]


def test_a_crashed_process_does_not_keep_the_server_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    with EmbeddedPostgres(data_dir):
        pass
    # A process that exited without stopping the server leaves its pid on pgserver's handle list.
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    (data_dir / ".handle_pids.json").write_text(json.dumps([int(dead.stdout)]))

    with EmbeddedPostgres(data_dir):
        assert (data_dir / "postmaster.pid").exists()
    assert not (data_dir / "postmaster.pid").exists()
