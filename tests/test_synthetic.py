"""The bundled synthetic tasks: generated world, splits, task contents and demonstrations."""

from __future__ import annotations

import dataclasses
import itertools
import operator
import re

import pytest
from promptr1.envs.synthetic import (
    RELATIONS,
    SyntheticTasks,
    World,
    demonstration,
    make_world,
)
from promptr1.envs.tasks import Task
from promptr1.envs.synthetic.expert import SimExpert

_TURN_RE = re.compile(r"^<think>[^<]+</think><interaction_prompt>([^<]+)</interaction_prompt>$")
_FINAL_RE = re.compile(r"^<think>[^<]+</think><answer>([^<]+)</answer>$")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


# --------------------------------------------------------------------------- the world
def test_world_is_deterministic_and_seed_dependent():
    uncached = make_world.__wrapped__
    assert uncached(0) == make_world(0)  # a fresh build equals the cached one
    assert uncached(3) == uncached(3)
    names0 = {e.name for e in make_world(0).entities}
    names1 = {e.name for e in make_world(1).entities}
    assert len(names0 & names1) < len(names0) // 4  # different seeds: mostly different entities


def test_world_facts_are_total_typed_and_consistent():
    world = make_world(0)
    assert isinstance(world, World)
    for e in world.entities:
        for rel in RELATIONS.values():
            if rel.subject_type == e.type:
                assert world.entity(world.lookup(e.name, rel.name)).type == rel.object_type
    for country in world.of_type("country"):  # the capital lies in its own country
        capital = world.lookup(country.name, "capital")
        assert world.lookup(capital, "located_in") == country.name


def test_every_name_token_is_unique_and_not_a_template_word():
    world = make_world(0)
    tokens = [t.lower() for e in world.entities for t in e.tokens]
    assert len(tokens) == len(set(tokens))
    template_words = {w.lower() for r in RELATIONS.values() for text in (*r.questions, *r.phrases, r.fact)
                      for w in re.findall(r"[A-Za-z]+", text)}
    assert not set(tokens) & template_words


def test_world_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_world(0).seed = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- splits
def test_train_and_test_share_no_question():
    train = SyntheticTasks("train", n=3000)
    test = SyntheticTasks("test", n=600)
    train_q = {t.question for t in train}
    test_q = {t.question for t in test}
    assert len(test_q) > 300 and len(train_q) > 1500
    assert not train_q & test_q
    assert not {t.id for t in train} & {t.id for t in test}


def test_multihop_test_split_holds_out_start_entities():
    world = make_world(0)
    starts = {}
    for split in ("train", "test"):
        starts[split] = {t.meta["hops"][0]["subject"] for t in SyntheticTasks(split, n=2000, kinds="multihop")}
    assert starts["test"] and not starts["train"] & starts["test"]
    assert starts["train"] | starts["test"] <= {e.name for e in world.entities}


def test_same_arguments_same_tasks_and_seed_changes_order():
    a = [t.id for t in SyntheticTasks("train", n=50, seed=1)]
    b = [t.id for t in SyntheticTasks("train", n=50, seed=1)]
    c = [t.id for t in SyntheticTasks("train", n=50, seed=2)]
    assert a == b and a != c


# --------------------------------------------------------------------------- the task source
def test_sequence_protocol_and_interleaving():
    ts = SyntheticTasks("test", n=7)
    assert len(ts) == 7 and isinstance(ts[0], Task) and ts[-1] is ts[6]
    assert [t.meta["kind"] for t in ts] == ["multihop", "arith"] * 3 + ["multihop"]
    assert [t.data_source for t in ts[:2]] == ["synthetic-multihop", "synthetic-arith"]
    assert [t.ability for t in ts[:2]] == ["multihop_qa", "math"]
    assert len(ts[1:3]) == 2
    with pytest.raises(IndexError):
        ts[7]


def test_kinds_accept_strings_and_aliases():
    assert {t.meta["kind"] for t in SyntheticTasks("train", n=6, kinds="arith")} == {"arith"}
    assert {t.meta["kind"] for t in SyntheticTasks("train", n=6, kinds="math,multihop")} == {"arith", "multihop"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"split": "valid"}, "split must be 'train' or 'test'"),
     ({"kinds": ("multihopp",)}, "Did you mean 'multihop'"),
     ({"kinds": ()}, "at least one"),
     ({"hops": (4,)}, "subset of (2, 3)"),
     ({"n": 0}, "n must be >= 1")],
)
def test_bad_arguments_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SyntheticTasks(**kwargs)


def test_hops_filter():
    assert {t.meta["n_hops"] for t in SyntheticTasks("train", n=40, kinds="multihop", hops=(3,))} == {3}
    assert {t.meta["n_hops"] for t in SyntheticTasks("train", n=200, kinds="multihop")} == {2, 3}


def test_multihop_meta_is_a_chain_of_world_facts():
    world = make_world(0)
    for t in SyntheticTasks("train", n=300, kinds="multihop"):
        hops = t.meta["hops"]
        assert t.meta["kind"] == "multihop" and len(hops) == t.meta["n_hops"] in (2, 3)
        for a, b in itertools.pairwise(hops):
            assert a["object"] == b["subject"]
        for h in hops:
            assert world.lookup(h["subject"], h["relation"]) == h["object"]
            assert h["subject"] in h["question"] and h["question"].endswith("?")
        assert t.answers == (hops[-1]["object"],)
        # the question names its start entity and no other entity (nothing to copy from it)
        named = {e.name for e in world.entities if re.search(rf"\b{re.escape(e.name)}\b", t.question)}
        assert named == {hops[0]["subject"]}
        entities_on_chain = [hops[0]["subject"], *(h["object"] for h in hops)]
        assert len(set(entities_on_chain)) == len(entities_on_chain)


def test_multihop_questions_read_naturally():
    for t in SyntheticTasks("train", n=1000, kinds="multihop"):
        assert t.question[0].isupper() and t.question.endswith("?")
        assert "born born" not in t.question and "  " not in t.question


def test_arith_steps_recompute_to_the_answer():
    for t in SyntheticTasks("train", n=300, kinds="arith"):
        steps = t.meta["steps"]
        assert 1 <= len(steps) == t.meta["n_ops"] <= 3
        previous = None
        for st in steps:
            a, op, b = st["expr"].split()
            if previous is not None:
                assert int(a) == previous
            if op == "/":
                assert int(a) % int(b) == 0
            previous = _OPS[op](int(a), int(b))
            assert st["value"] == previous and st["question"] == f"What is {st['expr']}?"
        assert t.answers == (str(previous),) and previous >= 0
        assert eval(t.meta["expression"], {"__builtins__": {}}) == previous  # trusted generated text


# --------------------------------------------------------------------------- demonstrations
@pytest.mark.parametrize("json_calls", [False, True])
def test_demonstration_turns_are_well_formed(json_calls):
    for t in SyntheticTasks("train", n=20):
        turns = demonstration(t, json_calls=json_calls)
        n_steps = len(t.meta["hops"]) if t.meta["kind"] == "multihop" else len(t.meta["steps"])
        assert len(turns) == n_steps + 1
        for turn in turns[:-1]:
            m = _TURN_RE.match(turn) if not json_calls else re.match(
                r'^<think>[^<]+</think><interaction_prompt>\{"name": "prompt", "arguments": \{"prompt": "[^"]+"\}\}'
                r"</interaction_prompt>$", turn)
            assert m, turn
        final = _FINAL_RE.match(turns[-1])
        assert final and final.group(1) == t.answers[0]


def test_demonstration_solves_tasks_with_the_sim_expert():
    sim = SimExpert(world_seed=0)
    for t in SyntheticTasks("test", n=200):
        turns = demonstration(t)
        steps = t.meta["hops"] if t.meta["kind"] == "multihop" else t.meta["steps"]
        history = [{"role": "system", "content": "You are a helpful assistant."}]
        for turn, step in zip(turns[:-1], steps):
            prompt = _TURN_RE.match(turn).group(1)
            reply = sim.complete([*history, {"role": "user", "content": prompt}]).text
            expected = step["object"] if "object" in step else str(step["value"])
            assert re.search(rf"(?<![\w]){re.escape(expected)}(?![\w])", reply), (prompt, reply, expected)
            history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        assert _FINAL_RE.match(turns[-1]).group(1) == t.answers[0]


def test_demonstration_earns_full_reward_on_the_whole_test_split():
    """Every multi-hop question of the test split (its whole pool) and 1,000 test word problems,
    played in the environment against ``sim`` under its one-fact / one-operation rules."""
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.envs.synthetic.world import _multihop_pool

    pool = _multihop_pool(0, "test", (2, 3))
    tasks = [*SyntheticTasks("test", kinds="multihop", n=len(pool)), *SyntheticTasks("test", kinds="arith", n=1000)]
    assert {t.question for t in tasks[:len(pool)]} == {t.question for t in pool}
    env = PromptCollabEnv(task=tasks, env_llm="sim", max_turns=4)
    for t in tasks:
        env.reset(options={"task": t})
        for turn in demonstration(t):
            _, reward, terminated, truncated, info = env.step(turn)
        assert terminated and info["reward_components"]["answer"] == 1.0, (t.question, env.turns)
        assert reward == pytest.approx(1.0)


def test_demonstration_rejects_other_tasks():
    with pytest.raises(ValueError, match="synthetic task"):
        demonstration(Task("What is 2+2?", ("4",)))


def test_demonstration_episode_in_the_environment_earns_full_reward():
    from promptr1.envs.collab_env import PromptCollabEnv

    env = PromptCollabEnv(task="synthetic:test", env_llm="sim", task_order="sequential")
    for _ in range(6):
        env.reset(seed=0)
        for turn in demonstration(env.task):
            _, reward, terminated, truncated, info = env.step(turn)
        assert terminated and not truncated and info["env_error"] is None
        assert reward == pytest.approx(1.0)


def test_sft_examples_play_demonstrations_at_once_with_the_same_result():
    """Demonstrations are played ``concurrency`` at a time (a batching backend answers them together); the
    examples, their order and the dropped ones are those of playing them one by one."""
    import threading
    import time

    from transformers import AutoTokenizer

    from promptr1.agents.rollout import ChatFramer
    from promptr1.agents.sft import sft_examples
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.llm_backends.base import BaseBackend
    from promptr1.testing.tiny_model import tiny_model_path

    class SlowSim(BaseBackend):
        """The sim expert, 20 ms a call, counting the calls in flight at once."""

        name = "slow-sim"

        def __init__(self):
            super().__init__()
            self.sim, self.lock, self.now, self.most = SimExpert(), threading.Lock(), 0, 0

        def complete(self, messages, **sampling):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(0.02)
            try:
                return self.sim.complete(messages, **sampling)
            finally:
                with self.lock:
                    self.now -= 1

    tasks = list(SyntheticTasks("train", n=12, seed=5))
    framer = ChatFramer(AutoTokenizer.from_pretrained(tiny_model_path()))

    def play(concurrency, max_seq_len):
        backend = SlowSim()
        eps = sft_examples(tasks, lambda: PromptCollabEnv(task=tasks, env_llm=backend, max_turns=4), framer,
                           demonstration, max_seq_len=max_seq_len, concurrency=concurrency)
        return eps, backend.most

    every, _ = play(1, 10**6)
    assert [e.task.id for e in every] == [t.id for t in tasks]
    cut = sorted(len(e.ids) for e in every)[len(every) // 2]  # drops the longer half
    (serial, most_serial), (together, most_together) = play(1, cut), play(6, cut)
    assert most_serial == 1 and most_together > 1
    assert 0 < len(serial) < len(tasks)
    assert [e.task.id for e in together] == [e.task.id for e in serial]
    assert [e.ids for e in together] == [e.ids for e in serial] and [e.mask for e in together] == [e.mask for e in serial]
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        sft_examples(tasks, lambda: None, framer, demonstration, max_seq_len=200, concurrency=0)
