"""Same question, same answer, through `penstock serve` as a user runs it: the README's question asked
five times, streaming and not, each time beside other requests, and again after a restart of the same
server (same home). Before batch invariance the second ask already answered differently."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from penstock.config import DEFAULT_MODEL_NAME
from tests.cli.conftest import ADMIN_KEY, RunningServer, start_server, stop_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TRAFFIC = [
    "Write a haiku about rivers.",
    "Explain gravity to a child in two sentences.",
    "List three colours of the rainbow, then say why the sky is blue in a long paragraph.",
]


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)


def ask(sdk: openai.OpenAI, *, stream: bool) -> str:
    if not stream:
        reply = sdk.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, temperature=0)
        return reply.choices[0].message.content or ""
    chunks = sdk.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, temperature=0, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def other_request(sdk: openai.OpenAI, index: int) -> None:
    question = [{"role": "user", "content": TRAFFIC[index % len(TRAFFIC)]}]
    sdk.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=question, max_tokens=20 + 15 * index)


def ask_beside_traffic(sdk: openai.OpenAI, *, stream: bool) -> str:
    """The question sent while three other requests of other lengths are running (and one after it)."""
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(other_request, sdk, i) for i in range(3)]
        answer = ask(sdk, stream=stream)
        others.append(pool.submit(other_request, sdk, 3))
        for other in others:
            other.result()
    return answer


def test_the_readme_question_gets_one_answer_across_traffic_and_a_restart(tmp_path: Path) -> None:
    running = start_server(tmp_path, PENSTOCK_ADMIN_KEY=ADMIN_KEY)
    try:
        answers = [ask_beside_traffic(client(running), stream=i % 2 == 1) for i in range(5)]
    finally:
        stop_server(running)
    restarted = start_server(tmp_path, PENSTOCK_ADMIN_KEY=ADMIN_KEY)
    try:
        answers += [ask(client(restarted), stream=False), ask_beside_traffic(client(restarted), stream=True)]
    finally:
        stop_server(restarted)
    assert "Paris" in answers[0]
    assert answers == [answers[0]] * 7
