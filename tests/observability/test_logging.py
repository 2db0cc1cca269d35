import io
import json
import sys
from datetime import UTC, datetime

import pytest
import structlog

from penstock.observability.logging import IsoTimestamp, configure_logging


def test_the_timestamp_reads_as_structlogs_iso_utc_and_is_now() -> None:
    stamp = IsoTimestamp()
    before = datetime.now(UTC)
    first = stamp(None, "info", {})["timestamp"]
    second = stamp(None, "info", {})["timestamp"]  # the cached second
    after = datetime.now(UTC)
    for text in (first, second):
        assert text.endswith("Z") and len(text) == len("2026-01-01T00:00:00.000000Z")
        assert before <= datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) <= after
    assert first <= second


def test_a_log_line_is_one_redacted_json_line_on_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("info")
    structlog.get_logger("t").info("request", user="alice@example.com", api_key="anything", n=3)
    structlog.get_logger("t").debug("hidden")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["user"] == "[EMAIL]" and line["api_key"] == "[REDACTED]" and line["n"] == 3
    assert line["event"] == "request" and line["level"] == "info" and line["timestamp"].endswith("Z")
