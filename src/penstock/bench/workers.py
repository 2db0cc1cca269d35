"""`penstock worker` processes for benchmarks that need real upstream engines: each on a loopback port
of its own, with its own home, started together and stopped (or killed, as a crash would) at will."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from penstock.bench.gateway import ENV_URLS, free_port, interrupt, wait_ready


class WorkerProcess:
    """`config`: the worker's YAML settings (its engine's cache size, say), else the defaults."""

    def __init__(self, home: Path, port: int | None = None, *, config: dict[str, Any] | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.home / "worker.log"

    def spawn(self) -> None:
        """Start it; `wait` returns once it serves."""
        command = [sys.executable, "-m", "penstock.cli.main", "worker", "--port", str(self.port)]
        if self._config is not None:
            path = self.home / "worker.yaml"
            path.write_text(yaml.safe_dump(self._config))
            command += ["--config", str(path)]
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(command, env=clean_env(self.home), stdout=out, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        assert self._process is not None
        wait_ready(self.url.removesuffix("/v1"), self._process, self.log)

    def kill(self) -> None:
        """SIGKILL: no goodbye, open connections reset, as a crashed or preempted machine's would be."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            interrupt(self._process)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without Penstock's settings (they would override the flags and config), homed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENSTOCK_") and k not in ENV_URLS}
    return env | {"PENSTOCK_HOME": str(home), **extra}


@contextmanager
def running_workers(count: int, config: dict[str, Any] | None = None) -> Iterator[list[WorkerProcess]]:
    """`count` workers, started at once (each loads its model: they overlap) and ready."""
    with ExitStack() as stack:
        homes = [
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="penstock-worker-"))) for _ in range(count)
        ]
        workers = [WorkerProcess(home, config=config) for home in homes]
        for worker in workers:
            stack.callback(worker.stop)
            worker.spawn()
        for worker in workers:
            worker.wait()
        yield workers


@dataclass(frozen=True, slots=True)
class GatewayProcess:
    base: str  # http://127.0.0.1:PORT
    pid: int


@contextmanager
def running_gateway(home: Path, config: dict[str, Any], admin_key: str) -> Iterator[GatewayProcess]:
    """`penstock serve` with `config` (its own embedded Postgres, the ledger on), as a user runs it."""
    path = home / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port, log = free_port(), home / "gateway.log"
    command = [sys.executable, "-m", "penstock.cli.main", "serve", "--port", str(port), "--config", str(path)]
    with log.open("wb") as out:
        env = clean_env(home, PENSTOCK_ADMIN_KEY=admin_key)
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, process, log)
        yield GatewayProcess(base, process.pid)
    finally:
        interrupt(process)
