import io
import json
import sys
from datetime import UTC, datetime

import pytest
import structlog

from penstock.observability.logging import IsoTimestamp, RequestLines, configure_logging


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


def test_a_turns_request_lines_are_written_at_once_redacted_but_for_their_makers_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    writes: list[str] = []
    monkeypatch.setattr(stream, "write", lambda text: writes.append(text) or len(text))
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("info")
    lines = RequestLines()
    assert lines.enabled
    lines.add({"total_ms": 1.5, "stage_ms": {"decode": 2.0}}, {"request_id": "4111111111111111", "tenant": "bob@x.io"})
    lines.add({"prompt_tokens": 3, "route": "a@b.io"}, {"request_id": "9f0e", "authorization": "Bearer abc"})
    assert writes == []  # nothing until the batch is written
    lines.write()
    lines.write()  # nothing left: nothing written
    assert len(writes) == 1 and writes[0].endswith("\n")
    first, second = (json.loads(text) for text in writes[0].splitlines())
    assert first["request_id"] == "[CARD]" and first["tenant"] == "[EMAIL]"
    assert first["stage_ms"] == {"decode": 2.0} and first["total_ms"] == 1.5
    assert second["authorization"] == "[REDACTED]" and second["prompt_tokens"] == 3
    assert second["route"] == "a@b.io"  # its maker's own: written as it is
    for line in (first, second):
        assert line["event"] == "request" and line["level"] == "info" and line["timestamp"].endswith("Z")


def test_request_lines_are_off_below_the_configured_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    configure_logging("warning")
    assert not RequestLines().enabled
    configure_logging("info")
    assert RequestLines().enabled
