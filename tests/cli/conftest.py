"""`penstock serve` as a user runs it: a separate process, embedded Postgres under its own home."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port

ADMIN_KEY = "sk-e2e-admin-0123456789"


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path


def penstock_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PENSTOCK_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return {**env, "PENSTOCK_HOME": str(home), **extra}


def penstock(
    *args: str, env: dict[str, str], input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "penstock.cli.main", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_server(home: Path, command: str = "serve", **env: str) -> RunningServer:
    """`penstock serve` (or `worker`) on a free port, returned once /readyz says ready."""
    port = free_port()
    log = home / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "penstock.cli.main", command, "--port", str(port)],
            env=penstock_env(home, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = RunningServer(f"http://127.0.0.1:{port}", home, process, log)
    try:
        _wait_ready(running)
    except BaseException:
        stop_server(running)
        raise
    return running


def stop_server(server: RunningServer) -> int:
    """Ctrl-C, as a user would; the exit code."""
    server.process.send_signal(signal.SIGINT)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait()


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("home"), PENSTOCK_ADMIN_KEY=ADMIN_KEY)
    yield running
    stop_server(running)


def _wait_ready(server: RunningServer, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"penstock serve exited early:\n{server.log.read_text()}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"penstock serve was not ready within {timeout_s}s:\n{server.log.read_text()}")
