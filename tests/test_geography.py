"""The bundled ``geo`` task set (for a real env LLM) and the warm start's plan-following demonstrations."""

from __future__ import annotations

import re

import pytest
from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.demonstrations import demonstration, replies_on_track
from promptr1.envs.geography import COUNTRIES, GeoTasks, split_of
from promptr1.envs.protocol import parse_turn
from promptr1.envs.tasks import Task, load_tasks

from promptr1.testing.scripted import ScriptedBackend


def test_splits_share_no_country_capital_or_landmark():
    train, test = GeoTasks("train"), GeoTasks("test")
    test_names = {c.name for c in COUNTRIES if split_of(c) == "test"}
    secrets = set()
    for c in COUNTRIES:
        if c.name in test_names:
            secrets |= {c.name, c.capital, *c.spellings, *([c.landmark] if c.landmark else [])}
    for t in train:
        for s in secrets:
            assert not re.search(rf"\b{re.escape(s)}\b", t.question), (s, t.question)
    assert {t.meta["country"] for t in test} == test_names
    assert 60 <= len(test) and 120 <= len(train)


def test_every_task_carries_a_plan_that_ends_at_its_answer():
    by_name = {c.name: c for c in COUNTRIES}
    for t in [*GeoTasks("train"), *GeoTasks("test")]:
        c = by_name[t.meta["country"]]
        assert t.answers[0] == c.capital and set(c.spellings) <= set(t.answers)
        assert len(t.meta["subquestions"]) == len(t.meta["expect"])
        assert t.meta["expect"][-1] == c.capital
        assert t.meta["subquestions"][-1] == f"What is the capital of {c.name}?"
        if t.meta["kind"] == "landmark":
            assert t.meta["subquestions"][0] == f"In which country is {c.landmark}?"
            assert c.name not in t.question and c.capital not in t.question
        else:  # a story names the country, and a distractor city that is not the answer
            assert c.name in t.question and t.meta["distractor"] in t.question
            assert t.meta["distractor"] != c.capital


def test_task_source_and_its_errors():
    assert len(load_tasks("geo:test")) == len(GeoTasks("test"))
    assert len(load_tasks("geo", split="test")) == len(GeoTasks("test"))
    landmarks = load_tasks("geo:train:landmark")
    assert {t.meta["kind"] for t in landmarks} == {"landmark"}
    assert len(landmarks) == sum(1 for c in COUNTRIES if c.landmark and split_of(c) == "train")
    with pytest.raises(ValueError, match="split"):
        GeoTasks("dev")
    with pytest.raises(ValueError, match="kinds"):
        GeoTasks("test", kinds="capitals")


def test_demonstration_asks_the_plan_in_order_then_answers():
    for t in [GeoTasks("test", kinds="landmark")[0], GeoTasks("test", kinds="story")[0]]:
        turns = demonstration(t)
        parsed = [parse_turn(x) for x in turns]
        assert [p.prompt for p in parsed[:-1]] == list(t.meta["subquestions"])
        assert parsed[-1].answer == t.answers[0]


def test_demonstration_of_a_task_without_a_plan_says_what_is_needed():
    with pytest.raises(ValueError, match="subquestions"):
        demonstration(Task("What is 2 + 2?", ("4",)))


def test_replies_on_track():
    t = GeoTasks("test", kinds="landmark")[0]
    country, capital = t.meta["expect"]
    assert replies_on_track(t, [f"It is in {country}.", f"The capital is {capital}."])
    assert not replies_on_track(t, [f"It is in {country}.", "I do not know."])
    assert not replies_on_track(t, [f"It is in {country}."])  # a reply missing
    assert replies_on_track(Task("q", ("a",)), [])  # no plan, nothing to check


def _oracle_for(tasks, wrong_country: str):
    """Answers every plain sub-question right, except the capital of ``wrong_country``."""
    by_name = {c.name: c for c in COUNTRIES}

    def reply(messages):
        asked = messages[-1]["content"]
        m = re.search(r"capital of (.+)\?", asked)
        if m:
            name = m.group(1)
            return "I am not sure." if name == wrong_country else f"The capital of {name} is {by_name[name].capital}."
        m = re.search(r"In which country is (.+)\?", asked)
        if m:
            return next(f"It is in {c.name}." for c in COUNTRIES if c.landmark == m.group(1))
        return "?"

    return ScriptedBackend(reply)


def test_sft_drops_demonstrations_whose_replies_are_off_track():
    from promptr1.agents.rollout import ChatFramer
    from promptr1.agents.sft import sft_examples
    from transformers import AutoTokenizer

    from promptr1.testing.tiny_model import tiny_model_path

    tasks = list(GeoTasks("train"))[:9]
    wrong = tasks[0].meta["country"]
    backend = _oracle_for(tasks, wrong)
    framer = ChatFramer(AutoTokenizer.from_pretrained(tiny_model_path()))
    examples = sft_examples(tasks, lambda: PromptCollabEnv(task=tasks, env_llm=backend, max_turns=4), framer,
                            demonstration, max_seq_len=4096)
    kept = [e.task for e in examples]
    assert kept == [t for t in tasks if t.meta["country"] != wrong]
    assert all(e.reward == pytest.approx(1.0) for e in examples)
