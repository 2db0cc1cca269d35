"""`penstock tenants` and `penstock keys` beside a running `penstock serve`, sharing its embedded Postgres."""

from __future__ import annotations

import json
import time

import openai
import pytest

from penstock.config import DEFAULT_MODEL_NAME
from tests.cli.conftest import RunningServer, penstock, penstock_env

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def cli(server: RunningServer, *args: str) -> str:
    result = penstock(*args, env=penstock_env(server.home))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_key_made_with_the_cli_works_and_stops_when_revoked(server: RunningServer) -> None:
    cli(server, "tenants", "create", "cli-co", "--name", "CLI Co", "--rpm", "600")
    key = cli(server, "keys", "create", "--tenant", "cli-co", "--models", DEFAULT_MODEL_NAME).strip()
    assert key.startswith("pk-") and "\n" not in key  # the key alone on stdout

    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    deadline = time.monotonic() + 1.0
    while True:  # the server's cache learns of keys made elsewhere within a poll
        try:
            reply = sdk.chat.completions.create(
                model=DEFAULT_MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=8
            )
            break
        except openai.AuthenticationError:
            assert time.monotonic() < deadline, "a new key was not accepted within a second"
            time.sleep(0.05)
    assert reply.usage.completion_tokens > 0

    [listed] = [json.loads(line) for line in cli(server, "keys", "list", "--tenant", "cli-co").splitlines()]
    assert key not in json.dumps(listed) and listed["prefix"] == key[:7]
    cli(server, "keys", "revoke", listed["id"])
    time.sleep(1.0)
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()
    assert key not in server.log.read_text()  # never in the logs


def test_tenants_list_shows_limits(server: RunningServer) -> None:
    cli(server, "tenants", "create", "listed-co", "--tpm", "1000", "--daily-tokens", "5000")
    tenants = {t["id"]: t for t in map(json.loads, cli(server, "tenants", "list").splitlines())}
    assert tenants["listed-co"]["limits"]["tpm"] == 1000
    assert tenants["listed-co"]["limits"]["daily_tokens"] == 5000


def test_cli_mistakes_are_one_line_and_a_nonzero_exit(server: RunningServer) -> None:
    result = penstock("keys", "create", "--tenant", "no-such-tenant", env=penstock_env(server.home))
    assert result.returncode == 1 and "no tenant 'no-such-tenant'" in result.stderr and result.stdout == ""
    result = penstock("tenants", "create", "bad id", env=penstock_env(server.home))
    assert result.returncode == 2 and "id" in result.stderr
