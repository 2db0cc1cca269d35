"""Redacts personal data and secrets from text before it reaches logs, traces, the review store or errors.

Each finding becomes a typed placeholder (`[EMAIL]`, `[PHONE]`, `[CARD]`, `[IBAN]`, `[API_KEY]`,
`Bearer [TOKEN]`, `user:[PASSWORD]@host`, `password=[REDACTED]`), so a redacted line still says what
was there. Redaction is idempotent: no placeholder matches a detector.

This runs on every log line and span attribute, so it is built for the line with nothing to find:
each detector sits behind a substring test or starts with a literal or a digit, which lets the
regex engine skip ahead in C instead of trying every position. Logs are full of numbers
(timestamps, ids, token counts, latencies), so the numeric detectors validate before they redact:
cards must pass Luhn, IBANs their checksum, phone numbers libphonenumber's VALID test and, when
written without a '+', the grouping their region uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import phonenumbers
from stdnum import iban, luhn

DEFAULT_REGION = "US"  # how a phone number written without a country code is read
REDACTED = "[REDACTED]"

# Key names whose value is a secret, in `key=value` text, JSON text and dict fields alike.
SECRET_NAMES = (
    "api_key",
    "access_key",
    "secret_key",
    "private_key",
    "client_secret",
    "secret",
    "token",
    "password",
    "passwd",
    "pwd",
    "credential",
    "credentials",
    "authorization",
)
_SECRET_FIELD_EXTRA = ("cookie", "session_id")


def _spellings(name: str) -> set[str]:
    return {name, name.replace("_", "-"), name.replace("_", "")}


def _after_any(suffix: str, boundary: str) -> str:
    """Lookbehinds that the text before here is a secret name followed by `suffix`.

    Python's lookbehind takes one width at a time, hence one per spelling; the first, on the names'
    last two letters, turns most keys away before the long alternation is tried.
    """
    names = sorted({spelling for name in SECRET_NAMES for spelling in _spellings(name)})
    endings = "|".join(sorted({re.escape(n[-2:] + suffix) for n in names}))
    return f"(?<={endings})(?:" + "|".join(f"(?<={boundary}{re.escape(n)}{suffix})" for n in names) + ")"


# The local part is bounded (64, as RFC 5321 does) so a long run of word characters costs linear time.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")

# The password runs to the last '@' before the path, so an unescaped '@' inside it cannot leak a tail.
# The scheme is bounded so that "a.a.a.a…://" costs linear time.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s:/@]*:)[^\s/?#]+@")

# A token must look like one (a digit or punctuation, or 16+ letters), so "bearer of bad news" stays.
_BEARER = re.compile(
    r"(?P<head>\bbearer\s+)(?=[A-Za-z]*[0-9._~+/=-]|[A-Za-z]{16})[A-Za-z0-9._~+/-]{8,}=*",
    re.IGNORECASE,
)

# Every branch starts with a literal, so the engine jumps between candidate prefixes.
_API_KEY = re.compile(
    r"pk-[A-Za-z0-9_-]{43}"  # Penstock's own: secrets.token_urlsafe(32)
    r"|sk-[A-Za-z0-9_-]{20,}"  # OpenAI and lookalikes, sk-proj- included
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"
    r"|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}"
    r"|xox[baprs]-[A-Za-z0-9-]{10,}"
)
_KEYISH = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

# `token=...` (query strings, logfmt) and `"token": "..."` (JSON bodies quoted in errors). Each match
# starts at a literal ('=' or '"') the engine can skip to; lookbehinds then check the key name. A value
# that is already a placeholder is left alone so `api_key=[API_KEY]` keeps its type.
_KEYED_SECRET = re.compile(
    rf"=(?:{_after_any('=', '(?<![A-Za-z0-9])')})(?!\[[A-Z_]+\])[^\s&\"',;]+",
    re.IGNORECASE,
)
_JSON_SECRET = re.compile(
    rf"\"(?:{_after_any(chr(34), '')})(?P<colon>\s*:\s*\")(?!\[[A-Z_]+\]\")[^\"]+",
    re.IGNORECASE,
)
# Field names are matched by suffix, which also catches camelCase ("accessToken" lowers to "accesstoken").
_SECRET_FIELD_SUFFIXES = tuple(
    sorted({spelling for name in SECRET_NAMES + _SECRET_FIELD_EXTRA for spelling in _spellings(name)})
)

# re.ASCII here and below: a Unicode digit is no part of a card, an IBAN or a phone number, and the
# validators only take ASCII.
_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d\d(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)", re.ASCII)

# A run of digits and separators, the only place a card or a phone number can be. It starts at a
# digit, or at '+' or '(' before one, consumed before the lookbehind so the engine can skip ahead in
# C. A run glued to a word, a dot or a dash is part of an id, a version or an address and is left
# alone, and so are runs that start with an ISO date or an IPv4 address. Runs are unbounded, so a
# card is never cut in two; requiring a digit after '+' and '(' keeps the scan linear.
_NUMBER = re.compile(
    r"[\d+(](?<![\w.+-].)(?:(?<=\d)|(?=\d))"
    r"(?!\d{3}-\d\d-\d\d|\d{0,2}(?:\.\d{1,3}){3}(?![\d.]))"
    r"[\d ().-]{5,}\d(?!\w)",
    re.ASCII,
)
_CARD = re.compile(
    r"(?<![\w.+-])(?:"
    r"\d{13,19}"
    r"|\d{4}(?P<sep>[ -])\d{4}(?P=sep)\d{4}(?P=sep)\d{4}"
    r"|\d{4}(?P<amex>[ -])\d{6}(?P=amex)\d{4,5}"  # Amex and Diners: 4-6-5 and 4-6-4
    r")(?!\w|-\w|\.\d)",  # a dash before a word or digit joins an id; before a space or the end, it is loose
    re.ASCII,
)
_CARD_FLOOR = 10**12  # the smallest 13-digit number
_PHONE_MIN_DIGITS = 7  # fewer digits is no phone
# libphonenumber's matcher is slow on long runs (~1 ms per 128 digit-dense characters), so a longer run
# is read in windows of 128 that start at a separator and overlap by more than any written phone number
# (about 25 characters), up to a budget; what a run holds beyond it is replaced whole.
_PHONE_WINDOW, _PHONE_OVERLAP, _PHONE_WINDOWS = 128, 40, 256
_PHONE_SEPARATORS = frozenset(" ().-")


# Lowercase hex with a letter in it (our request ids, trace ids) holds nothing a detector finds: every
# detector needs an uppercase letter, punctuation or a letter past 'f', except the number run, which
# must not be glued to a letter. Request ids never repeat, so they would miss the cache below.
_OPAQUE_ID = re.compile(r"[0-9a-f]*[a-f][0-9a-f]*")


def redact(text: str, region: str = DEFAULT_REGION) -> str:
    """Return `text` with every e-mail, phone, card, IBAN, key, token and URL password replaced."""
    return text if _OPAQUE_ID.fullmatch(text) else detect(text, region)


def detect(text: str, region: str = DEFAULT_REGION) -> str:
    """redact() without its shortcut for opaque ids."""
    lowered = text.lower()
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\g<head>[PASSWORD]@", text)
    if "bearer" in lowered:
        text = _BEARER.sub(r"\g<head>[TOKEN]", text)
    text = _API_KEY.sub(_api_key, text)
    if "=" in text:
        text = _KEYED_SECRET.sub("=" + REDACTED, text)
    if '"' in text:
        text = _JSON_SECRET.sub(rf'"\g<colon>{REDACTED}', text)
    if "@" in text:
        text = _EMAIL.sub("[EMAIL]", text)
    text = _IBAN.sub(_iban, text)
    return _NUMBER.sub(lambda match: _number(match, region), text)


def redact_value(value: object, region: str = DEFAULT_REGION) -> object:
    """Redact every string in `value`, walking dicts, lists and tuples; a secret-named field is blanked whole.

    Other values pass through, except an integer that is a card number, which becomes "[CARD]".
    """
    if isinstance(value, str):
        return _remembered(value, region) if len(value) <= _REMEMBERED_LENGTH else redact(value, region)
    if isinstance(value, dict):
        return _redact_fields(value, region)
    if isinstance(value, list):
        return [redact_value(item, region) for item in value]
    if isinstance(value, tuple):
        return tuple(redact_value(item, region) for item in value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _CARD_FLOOR:
        return redact(str(value), region) if _card_spans(str(value)) else value  # a card sent as a JSON number
    return value


def redact_event(logger: Any, method_name: str, event_dict: Mapping[str, Any]) -> dict[str, Any]:
    """structlog processor: a copy of the event with every value redacted. Place it just before the renderer."""
    return _redact_fields(event_dict, DEFAULT_REGION)


def _redact_fields(fields: Mapping[Any, Any], region: str) -> dict[Any, Any]:
    """A copy of `fields` with secret-named fields blanked and every other value redacted.

    This runs on every field of every log line, so the common cases are tested inline, cheapest
    first: a short string whose redaction is remembered, a value of an exact type with nothing to
    find (None, a float, a bool, an integer too short to be a card).
    """
    names, remembered, redacted = _SECRET_NAMES_SEEN, _REMEMBERED.setdefault(region, {}), {}
    for key, value in fields.items():
        secret = names.get(key)
        if secret is None:
            secret = _is_secret_name(key)
        if secret:
            redacted[key] = None if value is None else REDACTED
            continue
        kind = type(value)
        if kind is str:
            done = remembered.get(value)
            if done is None:
                short = len(value) <= _REMEMBERED_LENGTH
                done = _remember(value, remembered, region) if short else redact(value, region)
            redacted[key] = done
        elif kind in _INERT or (kind is int and -_CARD_FLOOR < value < _CARD_FLOOR):
            redacted[key] = value
        else:
            redacted[key] = redact_value(value, region)
    return redacted


_INERT = frozenset({type(None), float, bool})

# Logs repeat the same short values (tenants, routes, deployments, statuses): their redactions are
# remembered, by region, up to a bound past which the memory starts again (a client's text repeats
# less). Opaque ids are left out: they never repeat.
_REMEMBERED_LENGTH = 64
_REMEMBER = 8192
_REMEMBERED: dict[str, dict[str, str]] = {}


def _remembered(text: str, region: str) -> str:
    remembered = _REMEMBERED.setdefault(region, {})
    done = remembered.get(text)
    return done if done is not None else _remember(text, remembered, region)


def _remember(text: str, remembered: dict[str, str], region: str) -> str:
    """`text` redacted, and remembered in `remembered` (its region's) unless it is an opaque id."""
    if _OPAQUE_ID.fullmatch(text):
        return text
    done = detect(text, region)
    if len(remembered) >= _REMEMBER:
        remembered.clear()
    remembered[text] = done
    return done


# Field names repeat even more than values: what each one is, is remembered (a bounded number of
# them, since a dict being logged may come from a client).
_SECRET_NAMES_SEEN: dict[Any, bool] = {}
_NAMES_REMEMBERED = 4096


def _is_secret_name(key: object) -> bool:
    secret = isinstance(key, str) and key.lower().endswith(_SECRET_FIELD_SUFFIXES)
    if len(_SECRET_NAMES_SEEN) < _NAMES_REMEMBERED:
        _SECRET_NAMES_SEEN[key] = secret
    return secret


def _api_key(match: re.Match[str]) -> str:
    start, end, text = match.start(), match.end(), match.string
    glued = (start > 0 and text[start - 1] in _KEYISH) or (end < len(text) and text[end] in _KEYISH)
    return match[0] if glued else "[API_KEY]"


def _iban(match: re.Match[str]) -> str:
    return "[IBAN]" if iban.is_valid(match[0]) else match[0]


def _number(match: re.Match[str], region: str) -> str:
    """Cards first, then phones in the pieces between them: "order 12 4111 1111 1111 1111" holds a card."""
    run, pieces, end = match[0], [], 0
    for start, stop in _card_spans(run):
        pieces += [_redact_phones(run[end:start], region), "[CARD]"]
        end = stop
    pieces.append(_redact_phones(run[end:], region))
    return "".join(pieces)


def _card_spans(run: str) -> list[tuple[int, int]]:
    spans, found = [], _CARD.search(run)
    while found:
        if _is_card(found[0]):
            spans.append(found.span())
            found = _CARD.search(run, found.end())
        else:  # a longer number failed; a card may still start at the next group ("12 4111 1111 ...")
            found = _CARD.search(run, found.start() + 1)
    return spans


def _is_card(found: str) -> bool:
    digits = found.replace(" ", "").replace("-", "")
    # Issuers use first digits 2-6; this keeps epoch-millisecond and nanosecond stamps (1...) out.
    return digits[0] in "23456" and luhn.is_valid(digits)


def _redact_phones(piece: str, region: str) -> str:
    if len(piece) < _PHONE_MIN_DIGITS or sum(char.isdigit() for char in piece) < _PHONE_MIN_DIGITS:
        return piece
    pieces, end = [], 0
    for count, (start, window) in enumerate(_windows(piece)):
        if count == _PHONE_WINDOWS:
            return "".join([*pieces, piece[end : max(end, start)], "[NUMBERS]"])
        for found in phonenumbers.PhoneNumberMatcher(window, region, leniency=phonenumbers.Leniency.VALID):
            if start + found.start >= end and _written_as_phone(found.raw_string, region):
                pieces += [piece[end : start + found.start], "[PHONE]"]
                end = start + found.end
    return "".join([*pieces, piece[end:]])


def _windows(piece: str) -> Iterator[tuple[int, str]]:
    """`piece` in overlapping windows, each starting and ending at a separator (or the piece's ends)."""
    start = 0
    while True:
        stop = len(piece) if len(piece) - start <= _PHONE_WINDOW else _cut(piece, start + _PHONE_WINDOW)
        yield start, piece[start:stop]
        if stop == len(piece):
            return
        start = max(_cut(piece, stop - _PHONE_OVERLAP), start + 1)


def _cut(piece: str, at: int) -> int:
    """The last separator at or before `at`, after which a window may start or before which it may end."""
    for index in range(at, max(at - _PHONE_OVERLAP, 0), -1):
        if not piece[index].isdigit():
            return index
    return at


def _written_as_phone(raw: str, region: str) -> bool:
    """A leading '+' says "phone"; without one, the digits must be grouped the way the region writes them.

    A bare national digit run ("count 4155550132") or an odd grouping ("212.555.12.34") is more often
    a count, an id or an address than a phone number in a log line.
    """
    if raw.startswith("+"):
        return True
    if not any(char in _PHONE_SEPARATORS for char in raw):
        return False
    strict = phonenumbers.PhoneNumberMatcher(raw, region, leniency=phonenumbers.Leniency.STRICT_GROUPING)
    return any(found.raw_string == raw for found in strict)
