"""`penstock bench engine` and `bench serve` as commands: options reach the benchmark, stdout holds the result."""

import json
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from penstock.bench import engine, serve
from penstock.bench.engine import BenchOptions, EngineBenchResult
from penstock.bench.progress import Progress
from penstock.bench.serve import ServeBenchOptions
from penstock.bench.serving import Slo
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


SWEEP = {"capacity_rps": 2.0, "goodput_rps": {"1x": 1.9, "10x": 1.8}, "goodput_ratio_10x": 0.95, "refusal_p99_ms": 9.0}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServeBenchOptions]:
    calls: list[ServeBenchOptions] = []

    def fake(options: ServeBenchOptions, report: Callable[[str], None]) -> dict[str, Any]:
        calls.append(options)
        report("capacity search …")
        if options.url is not None:
            return {"slo": options.slo.as_dict(), "duration_s": options.duration_s, "url": options.url, **SWEEP}
        return {"slo": options.slo.as_dict(), "duration_s": options.duration_s, "engine": {"admission_on": SWEEP}}

    monkeypatch.setattr(serve, "run_serve_bench", fake)
    return calls


def test_bench_serve_reads_its_options_and_prints_one_object(served: list[ServeBenchOptions]) -> None:
    args = ["bench", "serve", "--json", "--url", "http://127.0.0.1:9/v1", "--api-key", "k", "--model", "m"]
    args += ["--slo", "ttft_ms=500,tpot_ms=50", "--multiples", "1,10", "--duration", "5", "--rate", "3"]
    result = CliRunner().invoke(penstock(), args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    (options,) = served
    assert (options.url, options.api_key, options.model, options.rate) == ("http://127.0.0.1:9/v1", "k", "m", 3.0)
    assert options.slo == Slo(ttft_ms=500, tpot_ms=50) and options.multiples == (1.0, 10.0)
    assert len(options.requests) == 512 and options.duration_s == 5
    assert figures["goodput_ratio_10x"] == 0.95 and figures["command"].startswith("penstock bench serve --url")


def test_bench_serve_prints_a_table_of_each_server(served: list[ServeBenchOptions]) -> None:
    result = CliRunner().invoke(penstock(), ["bench", "serve", "--backend", "engine", "--no-compare"])
    assert result.exit_code == 0, result.output
    assert served[0].backends == ("engine",) and not served[0].compare
    assert "engine," in result.stdout and "0.95" in result.stdout and "ttft_ms=2000,tpot_ms=250" in result.stdout


@pytest.mark.parametrize(("flag", "value"), [("--slo", "ttft=5"), ("--backend", "gpu"), ("--multiples", "x")])
def test_bench_serve_refuses_a_bad_option(served: list[ServeBenchOptions], flag: str, value: str) -> None:
    result = CliRunner().invoke(penstock(), ["bench", "serve", flag, value])
    assert result.exit_code == 2 and not served
