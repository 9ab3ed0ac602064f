"""The ``sim`` simulated expert: right on explicit sub-questions, vague or wrong otherwise, never crashes."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from promptr1.envs.synthetic import SyntheticTasks, make_world
from promptr1.llm_backends import Completion, make_backend
from promptr1.envs.synthetic.expert import SimExpert, evaluate_expression, find_expressions, format_number

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
    msgs = [{"role": "user", "content": "Compute (3+5)*2"}]
    assert asyncio.run(sim.acomplete(msgs)).text == sim.complete(msgs).text == "(3 + 5) * 2 = 16."


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


@pytest.mark.parametrize("style", ["mixed", "wrong", "vague"])
def test_pasting_the_whole_multihop_question_rarely_gives_the_answer(style):
    sim = SimExpert(vague_style=style)
    tasks = SyntheticTasks("test", n=200, kinds="multihop")
    for prompt_of in (lambda t: t.question, lambda t: t.prompt):
        hits = sum(contains(ask(sim, prompt_of(t)), t.answers[0]) for t in tasks)
        assert hits / len(tasks) < 0.10, (style, hits)


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


def test_arithmetic_replies(sim):
    assert ask(sim, "What is 12 * 4?") == "12 * 4 = 48."
    assert ask(sim, "Please compute 3 times 4 minus 2 for me.") == "3 * 4 - 2 = 10."
    assert "one calculation at a time" in ask(sim, "What is 3 + 4 and 5 * 6?")
    assert "malformed" in ask(sim, "What is 12 * * 4?")
    assert "division by zero" in ask(sim, "What is 5 / 0?")


def test_arith_sub_questions_right_and_multi_step_word_problems_pasted_wrong(sim):
    tasks = SyntheticTasks("test", n=300, kinds="arith")
    pasted_multi = []
    for t in tasks:
        for step in t.meta["steps"]:
            assert ask(sim, step["question"]) == f"{step['expr']} = {step['value']}."
        assert ask(sim, f"What is {t.meta['expression']}?").endswith(f"= {t.answers[0]}.")
        reply = ask(sim, t.question)
        if t.meta["n_ops"] == 1:  # one step: the expert can do it from the words alone
            assert reply == f"The answer is {t.answers[0]}.", (t.question, reply)
        else:
            pasted_multi.append(reply.rstrip(".").split()[-1] == t.answers[0])
    assert len(pasted_multi) > 150 and sum(pasted_multi) / len(pasted_multi) < 0.10


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
