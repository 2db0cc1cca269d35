"""`penstock worker` processes for benchmarks that need real upstream engines: each on a loopback port
of its own, with its own home, started together and stopped (or killed, as a crash would) at will."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from penstock.bench.gateway import ENV_URLS, free_port, wait_ready


class WorkerProcess:
    def __init__(self, home: Path, port: int | None = None, *, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._extra_env = extra_env or {}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.home / "worker.log"

    def spawn(self) -> None:
        """Start it; `wait` returns once it serves."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PENSTOCK_") and k not in ENV_URLS}
        env |= {"PENSTOCK_HOME": str(self.home), **self._extra_env}
        command = [sys.executable, "-m", "penstock.cli.main", "worker", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        assert self._process is not None
        wait_ready(self.url.removesuffix("/v1"), self._process, self.log)

    def kill(self) -> None:
        """SIGKILL: no goodbye, open connections reset, as a crashed or preempted machine's would be."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def running_workers(count: int, **extra_env: str) -> Iterator[list[WorkerProcess]]:
    """`count` workers, started at once (each loads its model: they overlap) and ready."""
    with ExitStack() as stack:
        homes = [
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="penstock-worker-"))) for _ in range(count)
        ]
        workers = [WorkerProcess(home, extra_env=extra_env) for home in homes]
        for worker in workers:
            stack.callback(worker.stop)
            worker.spawn()
        for worker in workers:
            worker.wait()
        yield workers
