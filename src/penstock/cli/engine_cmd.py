"""`penstock engine calibrate`: time each `fast` deployment's kernels again and keep the choice."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from penstock.cli.options import ConfigOption, settings_or_exit
from penstock.observability.logging import configure_logging

app = typer.Typer(help="The built-in engine's kernels.", no_args_is_help=True)


@app.command("calibrate")
def calibrate(config: Path | None = ConfigOption) -> None:
    """Measure the kernels of every `fast` deployment on this machine and store the choice under
    PENSTOCK_HOME/kernels; every later start (and replica sharing the home) reuses it. Deployments with
    `determinism: batch_invariant` (the default) run fixed kernels and have nothing to measure."""
    configure_logging("warning")
    from penstock.engine.loader import load_chat_model  # torch: only for the command that needs it
    from penstock.engine.locator import locate_chat_model
    from penstock.engine.served import DTYPES, engine_config, kernel_memory, quantization

    settings = settings_or_exit(config)
    for deployment in settings.deployments:
        path = locate_chat_model(deployment.model_path)
        memory = kernel_memory(deployment, path, settings.data_dir, remeasure=True)
        if memory is None:
            typer.echo(f"{deployment.name}: batch_invariant: fixed kernels, nothing to measure")
            continue
        quantize = quantization(deployment.weights, path, deployment.determinism)
        loaded = load_chat_model(path, dtype=DTYPES[deployment.dtype], quantize=quantize, memory=memory)
        engine_config(deployment, loaded.args, memory)
        choices = json.dumps(memory.stored(), sort_keys=True) if memory.path.exists() else "nothing timed"
        typer.echo(f"{deployment.name}: fast: {choices}\n  stored in {memory.path}")
