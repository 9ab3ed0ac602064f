"""The env's hot path, rewritten for speed (benchmarks/bench_env_overhead.py), says what the plain versions said."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from promptr1.envs.protocol import parse_turn
from promptr1.envs.step_info import StepInfo
from promptr1.rewards import compute_reward
from promptr1.core.tags import ANSWER_CLOSE, ANSWER_OPEN, PROMPT_CLOSE, PROMPT_OPEN, THINK_CLOSE, THINK_OPEN

PIECES = [THINK_OPEN, THINK_CLOSE, PROMPT_OPEN, PROMPT_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, " x ", "\n", "{", "}", "<",
          "</", ">", "think", '{"name": "prompt", "arguments": {"prompt": "q"}}']


def _regex_parse(text: str):
    """parse_turn as it was written with regular expressions (the reference's searches)."""
    def search(open_tag, close_tag):
        m = re.search(re.escape(open_tag) + "(.*?)" + re.escape(close_tag), text, re.DOTALL)
        return m.group(1) if m else None

    think = search(THINK_OPEN, THINK_CLOSE)
    return {"think": think.strip() if think is not None else None, "inner": search(PROMPT_OPEN, PROMPT_CLOSE),
            "answer": search(ANSWER_OPEN, ANSWER_CLOSE)}


def test_parse_turn_finds_what_the_regular_expressions_found():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12)))
        want, got = _regex_parse(text), parse_turn(text)
        assert got.think == want["think"], text
        if want["inner"] is not None:
            assert got.kind == "prompt" and got.inner == want["inner"], text
        elif want["answer"] is not None:
            assert got.kind == "answer" and got.answer == want["answer"].strip(), text
        else:
            assert got.kind == "none", text


@pytest.mark.parametrize("fields", [
    {},
    {"turn": 2, "turn_kind": "prompt", "parsed_prompt": "Who?", "turn_prefill": "<think>\n"},
    {"turn": 3, "turn_kind": "answer", "answer": "Paris", "reward_components": {"total": 1.0},
     "episode": {"r": 1.0, "l": 3}},
])
def test_info_of_is_the_records_dict_form(fields):
    assert StepInfo.info_of(**fields) == StepInfo(**fields).to_info()
    assert list(StepInfo.info_of(**fields)) == list(StepInfo(**fields).to_info())  # the same key order too


def test_info_of_refuses_an_unknown_field():
    with pytest.raises(TypeError, match="no field 'turns'"):
        StepInfo.info_of(turns=2)


def test_reward_breakdown_as_dict_is_every_field_in_order():
    good = f"{THINK_OPEN}t{THINK_CLOSE}{PROMPT_OPEN}p{PROMPT_CLOSE}"
    r = compute_reward([good, f"{THINK_OPEN}t{THINK_CLOSE}{ANSWER_OPEN}Paris{ANSWER_CLOSE}"], ["Paris"])
    assert r.as_dict() == {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
    assert list(r.as_dict()) == [f.name for f in dataclasses.fields(r)]
