"""`penstock bench engine` as a command: its options reach the benchmark, stdout holds only the result."""

import json
from dataclasses import fields, replace

import pytest
import typer
from typer.testing import CliRunner

from penstock.bench import engine
from penstock.bench.engine import BenchOptions, EngineBenchResult
from penstock.bench.progress import Progress
from penstock.cli import main

FILLER = {
    "float": 1.0,
    "int": 1,
    "bool": True,
    "str": "transformers x",
    "dict[str, float]": {"8": 1.0},
    "dict[str, dict[str, float]]": {"float32": {"8": 1.0}},
}
MODES = {"batch_invariant": 1.0, "fast": 1.0}
CANNED = replace(
    EngineBenchResult(**{f.name: FILLER[str(f.type)] for f in fields(EngineBenchResult)}),
    engine_tok_s_by_determinism=MODES,
    fp32_answer_match=MODES,
)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[BenchOptions]:
    calls: list[BenchOptions] = []

    def fake(options: BenchOptions, progress: Progress) -> EngineBenchResult:
        calls.append(options)
        progress.phase("working", 2)
        progress.advance(2)
        return replace(CANNED, command=options.command)

    monkeypatch.setattr(engine, "run_engine_bench", fake)  # the command imports it when it runs
    return calls


def penstock() -> typer.Typer:
    return main.app


def test_json_is_the_only_thing_on_stdout(seen: list[BenchOptions]) -> None:
    args = ["bench", "engine", "--json", "--quick", "--requests", "4", "--seed", "7", "--kv-fraction", "0.25"]
    result = CliRunner().invoke(penstock(), args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert seen == [BenchOptions(quick=True, requests=4, seed=7, kv_fraction=0.25)]
    assert (
        figures["command"]
        == "penstock bench engine --json --quick --requests 4 --seed 7 --kv-fraction 0.25 --dtype float32"
        " --weights auto --kv-dtype auto --attention auto --determinism batch_invariant"
        " --hf-dtype float32 --hf-dtype bfloat16"
    )


def test_the_peer_dtypes_can_be_narrowed(seen: list[BenchOptions]) -> None:
    result = CliRunner().invoke(penstock(), ["bench", "engine", "--json", "--hf-dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert seen[0].hf_dtypes == ("float32",)
    assert json.loads(result.stdout)["command"].endswith("--determinism batch_invariant --hf-dtype float32")


def test_the_table_names_the_command_and_the_peer(seen: list[BenchOptions]) -> None:
    result = CliRunner().invoke(penstock(), ["bench", "engine", "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert seen[0].dtype == "bfloat16" and "throughput" in result.stdout
    assert "command: penstock bench engine" in result.stdout and "peer:    transformers" in result.stdout
