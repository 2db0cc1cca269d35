"""Entry point: `penstock <command>`; each command lives in its own module."""

from __future__ import annotations

import typer

from penstock.cli import bench, chat, config_cmd, doctor, engine_cmd, evaluate, ingest, keys, review, serve, usage
from penstock.observability.logging import configure_logging

app = typer.Typer(help="Penstock: a self-hosted, OpenAI-compatible LLM service.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Logs go to stderr (warnings and up; `serve` sets its own level), so stdout holds only results."""
    configure_logging("warning")


app.command("serve")(serve.serve)
app.command("worker")(serve.worker)
app.command("chat")(chat.chat)
app.command("doctor")(doctor.doctor)
app.command("ingest")(ingest.ingest)
app.add_typer(evaluate.app, name="eval")
app.add_typer(config_cmd.app, name="config")
app.add_typer(bench.app, name="bench")
app.add_typer(engine_cmd.app, name="engine")
app.add_typer(keys.tenants_app, name="tenants")
app.add_typer(keys.keys_app, name="keys")
app.add_typer(usage.app, name="usage")
app.add_typer(review.app, name="review")

if __name__ == "__main__":
    app()
