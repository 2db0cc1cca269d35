"""Connection URL helpers: show a URL without its password, point a Postgres URL at another database."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

_MASK = "***"


def mask_password(url: str) -> str:
    """`url` with any password replaced by ***, safe for messages and logs; never raises."""
    if "://" in url:
        return _mask_url(url)
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable connection string>"
    if params.get("password"):
        params["password"] = _MASK
    return make_conninfo(**params)


def with_database(url: str, database: str) -> str:
    """The same server, user and options as `url`, naming `database` instead."""
    if "://" not in url:
        return make_conninfo(url, dbname=database)
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(database)))


def _mask_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if password:
        host = netloc.rpartition("@")[2]
        netloc = f"{quote(parts.username or '')}:{_MASK}@{host}"
    # libpq also accepts the password as a query parameter.
    query = [(k, _MASK if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="/*")))
