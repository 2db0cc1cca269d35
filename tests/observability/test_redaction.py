import secrets
import uuid

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import luhn

from penstock.observability import redaction
from penstock.observability.redaction import REDACTED, detect, redact, redact_event, redact_value

PK_KEY = "pk-" + "A1b2_C3d4-" * 4 + "xyz"  # the shape secrets.token_urlsafe(32) gives: 43 characters


@pytest.mark.parametrize(
    "text",
    [
        "alice@example.com",
        "Bob.Smith+invoices@mail.example.co.uk",
        "o'neil is x_y-z.99@sub-domain.example.io",
        "mailto:support@penstock.dev",
    ],
)
def test_emails_are_redacted(text: str) -> None:
    assert "@" not in redact(text)
    assert "[EMAIL]" in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "call +1 415-555-0132 today",
        "+44 20 7946 0958",
        "(415) 555-0132",
        "415-555-0132",
        "415.555.0132",
        "+14155550132",
        "+1 (415) 555-0132",
        "+33 1 42 68 53 00",
        "+91 98765 43210",
        "+49 30 901820",
        "room 12 (415) 555-0132",
    ],
)
def test_phone_numbers_are_redacted(text: str) -> None:
    assert "[PHONE]" in redact(text)
    assert "0132" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "3782 822463 10005",
        "paid with 6011111111111117, thanks",
        "card 4111111111111111 exp 12/27",
        "order 12 4111 1111 1111 1111 34",
        "4111111111111111: declined",
    ],
)
def test_luhn_valid_cards_are_redacted(text: str) -> None:
    assert "[CARD]" in redact(text)
    assert "1111 1111" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "pay to GB82WEST12345698765432.",
    ],
)
def test_ibans_are_redacted(text: str) -> None:
    assert "[IBAN]" in redact(text)
    assert "3704" not in redact(text)
    assert "5698" not in redact(text)


@pytest.mark.parametrize(
    "key",
    [
        "pk-" + secrets.token_urlsafe(32),
        PK_KEY,
        "sk-" + "a1" * 24,
        "sk-proj-" + "Ab3_" * 10,
        "ghp_" + "a1B2" * 9,
        "github_pat_" + "11ABCDEFG_" * 4,
        "AKIAIOSFODNN7EXAMPLE",
        "xoxb-1234567890-abcdefghij",
    ],
)
def test_api_keys_are_redacted(key: str) -> None:
    assert redact(f"using key {key} now") == "using key [API_KEY] now"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /v1/models?api_key=abc123&limit=5", "GET /v1/models?api_key=[REDACTED]&limit=5"),
        ("password=hunter2 user=alice", "password=[REDACTED] user=alice"),
        ("client_secret=s3cr3t;x=1", "client_secret=[REDACTED];x=1"),
        ("ACCESS_TOKEN=eyJ0eXAi.abc", "ACCESS_TOKEN=[REDACTED]"),
        ('{"password": "two words", "n": 1}', '{"password": "[REDACTED]", "n": 1}'),
        ("api_key=" + PK_KEY, "api_key=[API_KEY]"),
    ],
)
def test_values_after_secret_keys_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_-x", "Authorization: Bearer [TOKEN]"),
        ("authorization: bearer " + PK_KEY, "authorization: bearer [TOKEN]"),
        ("BEARER abcdefghijklmnopqrstuvwxyz", "BEARER [TOKEN]"),
    ],
)
def test_bearer_tokens_keep_the_word_and_lose_the_token(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://user:secret@db.internal/penstock", "postgresql://user:[PASSWORD]@db.internal/penstock"),
        ("redis://:p@ss@cache:6379/0", "redis://:[PASSWORD]@cache:6379/0"),
        ("dsn=https://svc:tok-123@example.org/path?q=1", "dsn=https://svc:[PASSWORD]@example.org/path?q=1"),
    ],
)
def test_passwords_in_urls_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 12345 shipped in 2024",
        "prompt_tokens=512 completion_tokens=128 total_tokens=640 max_tokens=4096",
        "latency 123.45 ms, ttft 87 ms, took 1234567.89 ms",
        "request_id=" + uuid.uuid4().hex,
        "trace " + str(uuid.uuid4()),
        "at 2024-05-01T12:34:56.789Z and 2024-05-01 12:34:56,789 and 2024-05-01T12:34:56+02:00",
        "peer 192.168.100.200:8080 via 10.0.0.1 and 212.55.12.34",
        "penstock v1.24.3, torch 2.4.1+cu121, build 10.0.19041.1",
        "epoch 1714567890 or 1714567890123 ms",
        "count 4155550132 tokens, 2147483648 bytes",
        "4111111111111112 fails Luhn, so does 4111 1111 1111 1112",
        "see http://host:8080/path and user@localhost",
        "the bearer of bad news; unexpected token: '}'",
        "task-abcdefghijklmnopqrstuvwxyz12 ran",
        "tokens 512 128 64 32 16",
        "ids 12345678901234567890123 and 1.2.3.4.5.6.7",
        "vector 0.1234 -0.5678 0.9123 0.4455 -0.1212",
        "DE89 3704 0044 0532 0130 01 has a bad checksum",
    ],
)
def test_ordinary_log_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@settings(max_examples=300)
@given(st.from_regex(r"[0-9a-f]*[a-f][0-9a-f]*", fullmatch=True) | st.just(uuid.uuid4().hex))
def test_the_shortcut_for_opaque_ids_skips_only_what_no_detector_finds(text: str) -> None:
    assert detect(text) == text


def test_an_id_of_digits_alone_is_still_checked() -> None:
    assert redact("4111111111111111") == "[CARD]"  # hex digits, but no letter: not an opaque id


def test_several_findings_in_one_line() -> None:
    text = "alice@example.com paid 4111 1111 1111 1111, call +1 415-555-0132 at 2024-05-01T12:34:56Z"
    assert redact(text) == "[EMAIL] paid [CARD], call [PHONE] at 2024-05-01T12:34:56Z"


def test_redact_value_walks_containers_and_blanks_secret_fields() -> None:
    value = {
        "user": {"email": "alice@example.com", "age": 41},
        "headers": [("Authorization", "Bearer abc.def.ghi123"), ("Accept", "application/json")],
        "api_key": "anything at all",
        "X-Api-Key": 12345,
        "accessToken": "short",
        "prompt_tokens": 512,
        "password": None,
        "card_as_number": 4111111111111111,
        "not_a_card": 4111111111111112,
    }
    assert redact_value(value) == redact_value(value)  # field names are remembered; the second walk agrees
    assert redact_value(value) == {
        "user": {"email": "[EMAIL]", "age": 41},
        "headers": [("Authorization", "Bearer [TOKEN]"), ("Accept", "application/json")],
        "api_key": REDACTED,
        "X-Api-Key": REDACTED,
        "accessToken": REDACTED,
        "prompt_tokens": 512,
        "password": None,
        "card_as_number": "[CARD]",
        "not_a_card": 4111111111111112,
    }


def test_structlog_processor_redacts_a_nested_event() -> None:
    event = {
        "event": "upstream failed for alice@example.com",
        "level": "error",
        "timestamp": "2024-05-01T12:34:56.789012Z",
        "request": {"messages": [{"role": "user", "content": "my card is 4111 1111 1111 1111"}]},
        "authorization": "Bearer " + PK_KEY,
        "latency_ms": 123.45,
    }
    assert redact_event(None, "error", event) == {
        "event": "upstream failed for [EMAIL]",
        "level": "error",
        "timestamp": "2024-05-01T12:34:56.789012Z",
        "request": {"messages": [{"role": "user", "content": "my card is [CARD]"}]},
        "authorization": REDACTED,
        "latency_ms": 123.45,
    }


def test_structlog_chain_renders_redacted_json() -> None:
    logger = structlog.wrap_logger(
        structlog.ReturnLogger(), processors=[redact_event, structlog.processors.JSONRenderer(sort_keys=True)]
    )
    line = logger.info("login", user="alice@example.com", password="hunter2", card=4111111111111111, n=1714567890123)
    assert (
        line == '{"card": "[CARD]", "event": "login", "n": 1714567890123, "password": "[REDACTED]", "user": "[EMAIL]"}'
    )


def luhn_valid(prefix_and_body: str) -> str:
    return prefix_and_body + luhn.calc_check_digit(prefix_and_body)


cards = st.builds(
    lambda first, body, grouped: _group(luhn_valid(first + body)) if grouped else luhn_valid(first + body),
    st.sampled_from("23456"),
    st.text("0123456789", min_size=14, max_size=14),
    st.booleans(),
)


def _group(digits: str) -> str:
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


emails = st.builds(
    "{}@{}.{}".format,
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,15}", fullmatch=True),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["com", "org", "io", "co.uk", "dev"]),
)
pk_keys = st.builds(lambda raw: "pk-" + raw, st.text("ABCxyz019_-", min_size=43, max_size=43))


@settings(max_examples=300, deadline=None)
@given(before=st.text(max_size=40), secret=st.one_of(emails, cards, pk_keys), after=st.text(max_size=40))
def test_a_planted_secret_never_survives(before: str, secret: str, after: str) -> None:
    assert secret not in redact(f"{before} {secret} {after}")


fragments = st.sampled_from(
    [" ", "-", ".", "@", ":", "=", "+", "(", ")", "/", '"', "://", "a", "Z", "0", "7", "2024-05-01", "bearer ",
     "token=", "password", "4111111111111111", "4111 1111 1111 1111", "+1 415-555-0132", "(415) 555-0132",
     "alice@example.com", "DE89370400440532013000", PK_KEY, "sk-" + "a1" * 12, "user:pw@", "[PHONE]", "[CARD]"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(fragments, st.text(max_size=3)), max_size=12).map("".join))
def test_redaction_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@pytest.mark.parametrize(
    "text", ["4111111111111111- 4111111111111111", "paid: 4111111111111111-", "4111 1111 1111 1111- ok"]
)
def test_a_card_before_a_loose_dash_is_redacted(text: str) -> None:
    """Found by the idempotence property: a dash glued to a card hid it unless a word followed the dash."""
    assert "1111" not in redact(text)
    assert redact(redact(text)) == redact(text)


def test_short_values_are_remembered_up_to_a_bound_and_opaque_ids_not_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    memory: dict[str, str] = {}
    monkeypatch.setattr(redaction, "_REMEMBERED", {"US": memory})
    monkeypatch.setattr(redaction, "_REMEMBER", 3)
    assert redact_value("3f2a9c0d8e7b4a1f") == "3f2a9c0d8e7b4a1f" and memory == {}  # ids never repeat
    for n in range(5):
        assert redact_value(f"user{n}@example.com") == "[EMAIL]"
        assert redact_value(f"user{n}@example.com") == "[EMAIL]"  # from memory, the same
        assert len(memory) <= 3
    assert redact_value({"tenant": "user4@example.com"}) == {"tenant": "[EMAIL]"}  # fields read the same memory


@pytest.mark.parametrize("separator", [". ", " - ", " (", " . "])
@pytest.mark.parametrize("digits", [20, 129, 5000])
def test_a_phone_beside_a_long_run_of_digits_is_redacted(separator: str, digits: int) -> None:
    """Audit finding 13: a phone number followed by more than 128 digits was left in clear."""
    for text in (f"call +1 415-555-0132{separator}{'7' * digits}", f"{'7 ' * digits}. call (415) 555-0132 now"):
        redacted = redact(text)
        assert "555" not in redacted and "[PHONE]" in redacted
        assert redacted.count("7") >= digits  # the numbers beside it are kept


def test_a_run_of_numbers_past_the_scan_budget_is_replaced_not_left_in_clear() -> None:
    dump = " ".join(["1234 5678"] * 10_000) + " . (415) 555-0132"  # one run, past 256 windows of 128 characters
    redacted = redact(dump)
    assert "555-0132" not in redacted and redacted.endswith("[NUMBERS]")
    assert redacted.startswith("1234 5678 1234")
