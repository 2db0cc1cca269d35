"""`penstock chat`: a terminal conversation with a running server, tokens printed as they arrive."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import typer

from penstock.cli.options import err_console
from penstock.config import DEFAULT_MODEL_NAME


def chat(
    url: str = typer.Option("http://127.0.0.1:8000", help="Base URL of the Penstock server."),
    model: str = typer.Option(DEFAULT_MODEL_NAME, help="Model (deployment) to talk to."),
    system: str | None = typer.Option(None, help="System prompt."),
    api_key: str | None = typer.Option(None, envvar=["PENSTOCK_API_KEY", "PENSTOCK_ADMIN_KEY"], show_default=False),
    temperature: float = typer.Option(0.7, min=0.0, max=2.0),
    max_tokens: int = typer.Option(512, min=1),
) -> None:
    """Chat in the terminal; an empty line or Ctrl-D ends the conversation."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(10.0, read=300.0)) as client:
        while (line := _read_line()) is not None:
            messages.append({"role": "user", "content": line})
            body = {"model": model, "messages": messages, "stream": True, "temperature": temperature}
            body["max_tokens"] = max_tokens
            reply = "".join(_print_stream(_stream(client, body)))
            messages.append({"role": "assistant", "content": reply})


def _read_line() -> str | None:
    try:
        line = input("\nyou> ").strip()
    except (EOFError, KeyboardInterrupt):
        return None
    return line or None


def _print_stream(pieces: Iterator[str]) -> Iterator[str]:
    typer.echo("assistant> ", nl=False)
    for piece in pieces:
        typer.echo(piece, nl=False)
        yield piece
    typer.echo()


def _stream(client: httpx.Client, body: dict[str, object]) -> Iterator[str]:
    """The content deltas of one streamed completion; errors are reported, not raised."""
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                err_console.print(f"[red]error {response.status_code}:[/red] {_error_text(response)}")
                return
            yield from _content_deltas(response.iter_lines())
    except httpx.HTTPError as exc:
        err_console.print(f"[red]cannot reach {client.base_url}:[/red] {exc}")


def _content_deltas(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[len("data: ") :])
        if "error" in event:
            err_console.print(f"[red]error:[/red] {event['error']['message']}")
            return
        for choice in event.get("choices", []):
            if content := choice["delta"].get("content"):
                yield content


def _error_text(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500]
