"""Grammar-constrained decoding with the real model: what comes out matches, whatever the sampler draws."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest

from penstock.engine.async_engine import AsyncEngine
from penstock.engine.loader import LoadedModel
from penstock.errors import InvalidRequest
from penstock.types import Grammar, SamplingParams
from tests.engine.test_async_engine import chat_prompt, collect, joined

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


async def test_sampled_output_follows_a_json_schema(engine: AsyncEngine, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "Describe a person.")
    grammar = Grammar("json_schema", json.dumps(PERSON))
    # Hot sampling wanders off at once without the mask; with it every choice parses and fits the schema.
    params = SamplingParams(max_tokens=60, temperature=1.2, seed=7, n=3, grammar=grammar)
    events = await collect(engine, prompt, params)
    for index in range(3):
        choice = [e for e in events if e.index == index]
        assert choice[-1].finish_reason == "stop"
        jsonschema.validate(json.loads(joined(choice)), PERSON)


async def test_a_regex_limits_the_answer_to_its_alternatives(engine: AsyncEngine, loaded: LoadedModel) -> None:
    prompt = chat_prompt(loaded, "Is the sky green? Answer in a sentence.")
    params = SamplingParams(max_tokens=10, temperature=0, grammar=Grammar("regex", "(yes|no|maybe)"))
    events = await collect(engine, prompt, params)
    assert re.fullmatch("yes|no|maybe", joined(events))
    assert events[-1].finish_reason == "stop"


async def test_unconstrained_output_is_untouched(engine: AsyncEngine, loaded: LoadedModel) -> None:
    # The mask is per sequence: a constrained request beside a free one leaves the free one as it was.
    prompt = chat_prompt(loaded, "What is the capital of France?")
    free = SamplingParams(max_tokens=12, temperature=0)
    alone = joined(await collect(engine, prompt, free))
    constrained = SamplingParams(max_tokens=12, temperature=0, grammar=Grammar("regex", "[0-9]+"))
    both = [collect(engine, prompt, free), collect(engine, prompt, constrained)]
    beside, digits = await asyncio.gather(*both)
    assert joined(beside) == alone
    assert re.fullmatch("[0-9]+", joined(digits))


def test_an_invalid_grammar_is_the_callers_error(engine: AsyncEngine) -> None:
    with pytest.raises(InvalidRequest, match="invalid regex"):
        engine.grammars.compile(Grammar("regex", "(unclosed"))
    with pytest.raises(InvalidRequest):
        engine.grammars.compile(Grammar("lark", "start: missing_rule"))


def test_a_compiled_grammar_is_reused(engine: AsyncEngine) -> None:
    grammar = Grammar("json_schema", json.dumps(PERSON))
    assert engine.grammars.compile(grammar) is engine.grammars.compile(Grammar("json_schema", json.dumps(PERSON)))
