"""The ``sim`` simulated expert: one fact or one operation per call, never a composite question, never crashes."""

from __future__ import annotations

import asyncio
import re
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from promptr1.envs.synthetic import SyntheticTasks, make_world
from promptr1.llm_backends import Completion, make_backend
from promptr1.envs.synthetic.expert import (
    SimExpert,
    count_operations,
    evaluate_expression,
    find_expressions,
    format_number,
)

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@pytest.fixture(scope="module")
def sim() -> SimExpert:
    return SimExpert(world_seed=0)


def ask(sim: SimExpert, prompt: str, history: list[dict[str, str]] | None = None) -> str:
    return sim.complete([SYSTEM, *(history or []), {"role": "user", "content": prompt}]).text


def contains(reply: str, answer: str) -> bool:
    return answer.lower() in reply.lower()


# --------------------------------------------------------------------------- registry and contract
def test_registered_as_sim_and_deterministic():
    backend = make_backend("sim")
    assert isinstance(backend, SimExpert) and backend.name == "sim" and backend.deterministic
    msgs = [{"role": "user", "content": "What is 12 * 4?"}]
    first = backend.complete(msgs)
    assert isinstance(first, Completion)
    assert first.text == "12 * 4 = 48."
    assert first.prompt_tokens == 5 and first.completion_tokens == 5 and first.model == "sim"
    assert first.extra["intent"] == "arith"
    assert SimExpert().complete(msgs, temperature=1.3, max_tokens=3).text == first.text


def test_async_twin_gives_the_same_reply(sim):
    msgs = [{"role": "user", "content": "Compute (3+5)"}]
    assert asyncio.run(sim.acomplete(msgs)).text == sim.complete(msgs).text == "(3 + 5) = 8."


def test_pickles_and_keeps_its_world(sim):
    import pickle

    clone = pickle.loads(pickle.dumps(SimExpert(world_seed=2, vague_style="wrong")))
    assert clone.world == make_world(2) and clone.vague_style == "wrong"
    task = SyntheticTasks("train", world_seed=2, n=1, kinds="multihop")[0]
    assert contains(ask(clone, task.meta["hops"][0]["question"]), task.meta["hops"][0]["object"])
    assert repr(clone) == "SimExpert(world_seed=2, vague_style='wrong')"


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="vague_style"):
        SimExpert(vague_style="rude")
    with pytest.raises(ValueError, match="role"):
        SimExpert().complete([{"role": "robot", "content": "hi"}])


# --------------------------------------------------------------------------- knowledge-base questions
def test_explicit_sub_questions_are_answered_correctly(sim):
    tasks = SyntheticTasks("test", n=200, kinds="multihop")
    hops = [h for t in tasks for h in t.meta["hops"]]
    assert len(hops) >= 400
    for h in hops:
        reply = ask(sim, h["question"])
        assert contains(reply, h["object"]) and contains(reply, h["subject"]), (h["question"], reply)
        assert len(reply) < 200


def says(reply: str, answer: str) -> bool:
    """Does ``reply`` state ``answer`` (as a whole word or number, any case)?"""
    return re.search(rf"(?<![\w.]){re.escape(answer.lower())}(?![\w]|\.\d)", reply.lower()) is not None


@pytest.mark.parametrize("style", ["mixed", "wrong", "vague"])
def test_no_composite_question_of_the_test_split_is_answered_right_when_pasted_whole(style):
    """Every multi-hop question and every word problem (one operation included) of the whole test
    split, pasted as the bare question or as the agent's whole prompt (question + instruction)."""
    sim = SimExpert(vague_style=style)
    multihop = SyntheticTasks("test", kinds="multihop", n=400)
    arith = SyntheticTasks("test", kinds="arith", n=400)
    assert {t.meta["n_ops"] for t in arith} == {1, 2, 3} and {t.meta["n_hops"] for t in multihop} == {2, 3}
    for t in [*multihop, *arith]:
        for prompt in (t.question, t.prompt, f"First explain the facts or steps needed, then answer. {t.question}"):
            reply = ask(sim, prompt)
            assert not says(reply, t.answers[0]), (style, prompt, reply)
            if t.meta["kind"] == "arith":  # a story is never read: no number at all in the reply
                assert not re.search(r"\d", reply), (prompt, reply)


def test_a_wrong_guess_is_never_the_answer_on_the_train_split_either():
    sim = SimExpert(vague_style="wrong")
    for t in SyntheticTasks("train", kinds="multihop", n=906):
        reply = ask(sim, t.question)
        assert sim.reply([{"role": "user", "content": t.question}])[1] == "wrong_multi"
        assert not says(reply, t.answers[0]), (t.question, reply)


def test_vague_style_never_names_an_entity():
    sim = SimExpert(vague_style="vague")
    names = [e.name for e in sim.world.entities]
    for t in SyntheticTasks("train", n=100, kinds="multihop"):
        reply = ask(sim, t.question)
        assert not any(n in reply for n in names if n not in t.question), reply


def test_wrong_style_names_a_plausible_entity_not_the_answer():
    sim = SimExpert(vague_style="wrong")
    names = {e.name for e in sim.world.entities}
    tasks = SyntheticTasks("train", n=100, kinds="multihop")
    named = [any(n in ask(sim, t.question) for n in names) for t in tasks]
    assert all(named)


def test_pronoun_follow_ups_use_the_previous_reply(sim):
    world = sim.world
    company = world.of_type("company")[0].name
    founder = world.lookup(company, "founded_by")
    birthplace = world.lookup(founder, "born_in")
    country = world.lookup(birthplace, "located_in")
    history: list[dict[str, str]] = []
    for prompt, expected in ((f"Who founded {company}?", founder), ("Where was that person born?", birthplace),
                             ("In which country is that city located?", country),
                             ("What is the capital of that country?", world.lookup(country, "capital"))):
        reply = ask(sim, prompt, history)
        assert contains(reply, expected), (prompt, reply)
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    # without an earlier reply there is nobody to refer to
    assert "name it" in ask(sim, "Where was he born?")
    # context stated inside the prompt works too
    assert contains(ask(sim, f"{company} was founded by {founder}. Where was he born?"), birthplace)


def test_the_last_question_of_a_prompt_is_the_one_answered(sim):
    world = sim.world
    city = world.of_type("city")[5].name
    mayor = world.lookup(city, "mayor")
    assert contains(ask(sim, f"I am working on a long puzzle. Who is the mayor of {city}?"), mayor)
    # the whole multi-hop question after an explicit one: the multi-hop one is what is asked
    assert not contains(ask(sim, f"Who is the mayor of {city}? Where was the mayor of {city} born?"),
                        world.lookup(mayor, "born_in"))


def test_lenient_on_case_and_partial_names(sim):
    world = sim.world
    company = world.of_type("company")[2].name
    founder = world.lookup(company, "founded_by")
    assert contains(ask(sim, f"who founded {company.lower()}"), founder)
    assert contains(ask(sim, f"Who is the founder of {company.split()[0]}?"), founder)
    person = world.of_type("person")[7].name
    assert contains(ask(sim, f"Which company does {person.split()[0]} work for?"), world.lookup(person, "works_for"))


def test_two_subjects_or_wrong_types_are_not_answered(sim):
    world = sim.world
    a, b = world.of_type("company")[:2]
    reply = ask(sim, f"Who founded {a.name} and {b.name}?")
    assert not contains(reply, world.lookup(a.name, "founded_by")) or not contains(reply, world.lookup(b.name, "founded_by"))
    city = world.of_type("city")[0].name
    assert "don't know" in ask(sim, f"Who founded {city}?")
    assert "know about" in ask(sim, f"Tell me about {city}")


def test_unknown_entities_and_chit_chat_get_a_generic_reply(sim):
    for prompt in ("Hello!", "Who founded Microsoft?", "What is the meaning of life?", ""):
        reply = ask(sim, prompt)
        assert reply and len(reply) < 200
        assert not any(e.name in reply for e in sim.world.entities)


# --------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize(
    ("expr", "value"),
    [("12 * 4", 48), ("(3+5)*2", 16), ("2 + 3 * 4", 14), ("10 - 4 - 3", 3), ("8 / 4 / 2", 1), ("-3 + 5", 2),
     ("7 / 2", Fraction(7, 2)), ("3 times 4 minus 2", 10), ("12 x 4", 48), ("12 × 4", 48), ("9 ÷ 3", 3),
     ("2 * (3 + (4 - 1))", 12), ("1.5 * 4", 6), ("20 divided by 4 plus 1", 6), ("- -2", 2)],
)
def test_expression_known_answers(expr, value):
    assert evaluate_expression(expr) == value


@pytest.mark.parametrize("expr", ["12 * * 4", "(3 + 5", "3 +", "", "4 5", ")(", "2 ** 3", "1" * 13 + " + 1",
                                  "12 apples", "(" * 30 + "1" + ")" * 30, "1 / 0", "99999999999 ** 2",
                                  "999999999999 * 999999999999", "1 +" * 100])
def test_malformed_or_unevaluable_expressions_raise_value_error(expr):
    with pytest.raises(ValueError):
        evaluate_expression(expr)


def test_find_expressions_separates_good_from_malformed():
    assert find_expressions("What is 12 * 4? Then (3 + 5") == (["12 * 4"], ["(3 + 5"])
    assert find_expressions("Ana has 12 boxes; this is a 2-step task with -3 degrees.") == ([], [])
    assert find_expressions("Compute (3+5)*2.") == (["(3 + 5) * 2"], [])


def test_format_number():
    assert [format_number(Fraction(x)) for x in ("48", "7/2", "-1/3", "1/3000000")] == ["48", "3.5", "-0.333333", "0"]


def test_count_operations():
    assert [count_operations(e) for e in ("12 * 4", "-3 + 5", "(3 + 5)", "(38 + 11) / 7", "36 + 5 - 2 + 5",
                                          "3 times 4 minus 2", "- -2")] == [1, 1, 1, 2, 3, 2, 0]


def test_arithmetic_replies(sim):
    assert ask(sim, "What is 12 * 4?") == "12 * 4 = 48."
    assert ask(sim, "Please compute 3 times 4 for me.") == "3 * 4 = 12."
    assert ask(sim, "What is 7 / 2?") == "7 / 2 = 3.5."
    assert "one calculation at a time" in ask(sim, "What is 3 + 4 and 5 * 6?")
    assert "malformed" in ask(sim, "What is 12 * * 4?")
    assert "division by zero" in ask(sim, "What is 5 / 0?")
    # context before the question is fine: the expression asked is the one in the last question
    assert ask(sim, "Ana has 38 apples and finds 11 more. What is 38 + 11?") == "38 + 11 = 49."


@pytest.mark.parametrize("expr", ["36 + 5 - 2 + 5", "(38 + 11) / 7", "3 times 4 minus 2", "2 * (3 + 4)",
                                  "10 - 4 - 3", "8 / 4 / 2", "1 + 1 + 1"])
def test_an_expression_with_several_operations_is_refused_not_computed(sim, expr):
    out = sim.complete([SYSTEM, {"role": "user", "content": f"What is {expr}?"}])
    assert out.extra["intent"] == "several_operations"
    assert "one operation" in out.text and not re.search(r"\d", out.text), out.text


_small = st.integers(0, 60)
_op = st.sampled_from(["+", "-", "*", "/", "plus", "minus", "times", "x"])


@settings(max_examples=200, deadline=None)
@given(a=_small, b=st.integers(1, 60), op=_op)
def test_one_operation_is_computed_exactly(a, b, op):
    reply = SimExpert().complete([{"role": "user", "content": f"What is {a} {op} {b}?"}]).text
    sym = {"plus": "+", "minus": "-", "times": "*", "x": "*"}.get(op, op)
    assert reply == f"{a} {sym} {b} = {format_number(evaluate_expression(f'{a} {sym} {b}'))}."


@settings(max_examples=200, deadline=None)
@given(nums=st.lists(_small, min_size=3, max_size=5), ops=st.lists(_op, min_size=4, max_size=4),
       brackets=st.booleans())
def test_several_operations_never_get_a_number(nums, ops, brackets):
    expr = str(nums[0])
    for op, n in zip(ops, nums[1:]):
        expr = f"{expr} {op} {n}"
        if brackets:
            expr, brackets = f"({expr})", False
    out = SimExpert().complete([{"role": "user", "content": f"Compute {expr}."}])
    assert count_operations(expr) == len(nums) - 1 >= 2
    assert out.extra["intent"] == "several_operations" and not re.search(r"\d", out.text), (expr, out.text)


def test_arith_sub_questions_right_and_whole_expressions_refused(sim):
    tasks = SyntheticTasks("test", n=400, kinds="arith")
    for t in tasks:
        for step in t.meta["steps"]:
            assert ask(sim, step["question"]) == f"{step['expr']} = {step['value']}."
        whole = ask(sim, f"What is {t.meta['expression']}?")
        if t.meta["n_ops"] == 1:
            assert whole == f"{t.meta['steps'][0]['expr']} = {t.answers[0]}."
        else:
            assert "one operation" in whole and not re.search(r"\d", whole), (t.meta["expression"], whole)


def test_word_problems_are_not_read(sim):
    one_op = "Ana has 38 apples. Then Ana finds 11 more apples. How many apples does Ana have now?"
    for prompt in (one_op, "Ben has 3 boxes with 4 cards in each box. How many cards does Ben have?",
                   "I have 12 apples and 4 friends; how many apples does each friend get?"):
        out = sim.complete([SYSTEM, {"role": "user", "content": prompt}])
        assert out.extra["intent"] == "word_problem" and not re.search(r"\d", out.text), out.text


def test_the_relay_scores_nothing_on_the_test_split():
    """Paste the question, answer with the reply (the dumbest rule): answer F1 0 on every test task."""
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.evaluation.policies import TextPolicyPlayer
    from promptr1.testing.agents import ScriptedAgentPolicy

    tasks = list(SyntheticTasks("test", n=200))
    envs = [PromptCollabEnv(task=tasks, env_llm="sim", max_turns=4) for _ in tasks]
    episodes = asyncio.run(TextPolicyPlayer(ScriptedAgentPolicy.relay(), batch_size=64).aplay(envs, tasks))
    assert len(episodes) == 200 and all(e.done for e in episodes)
    assert max(e.components["answer"] for e in episodes) == 0.0
    assert {round(e.reward, 6) for e in episodes} == {0.0}  # format capped (1 prompt + answer), answer 0


# --------------------------------------------------------------------------- robustness
_JUNK = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=()), max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=_JUNK, previous=_JUNK)
def test_never_raises_and_replies_short_and_stable(prompt, previous):
    sim = SimExpert()
    msgs = [SYSTEM, {"role": "user", "content": "x"}, {"role": "assistant", "content": previous},
            {"role": "user", "content": prompt}]
    out = sim.complete(msgs)
    assert isinstance(out.text, str) and 0 < len(out.text) < 200
    assert sim.complete(msgs).text == out.text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["Who", "founded", "born", "capital", "of", "(", ")", "*", "+", "-", "/", "12",
                                 "0", "?", ".", "\n", "that", "city", "more", "equally", "in each box",
                                 "gives away", "7", "Lastel", "Pokri", "Vasos", "mayor", "country"]), max_size=40))
def test_never_raises_on_keyword_soup(words):
    reply = SimExpert().complete([{"role": "user", "content": " ".join(words)}]).text
    assert 0 < len(reply) < 200


@pytest.mark.parametrize("prompt", ["a" * 1_000_000, "12 + " * 200_000, "(" * 1_000_000, "\x00\x07\x1b" * 1000,
                                    "\ud800 Who founded \udfff?", "Ｗｈｏ ｆｏｕｎｄｅｄ？" * 10, "\u202e" * 50])
def test_pathological_prompts(sim, prompt):
    out = sim.complete([{"role": "user", "content": prompt}])
    assert 0 < len(out.text) < 200


def test_world_seed_must_match_the_tasks():
    other = SimExpert(world_seed=1)
    assert other.world == make_world(1)
    hops = [h for t in SyntheticTasks("test", n=60, kinds="multihop") for h in t.meta["hops"]]
    hits = sum(contains(ask(other, h["question"]), h["object"]) for h in hops)
    assert hits / len(hops) < 0.2
