"""Known-answer tests for the dual-constrained reward (docs/reward.md).

Expected values are computed by hand in the tables: format = 0.4 per well-formed prompt turn
(all turns but the last) + 0.25 + 0.25 for a non-empty answer in the last turn + 0.1 if the
last turn is <think>..</think>..<answer>..</answer>, capped at 1.0; faithful total =
-1 + format + answer when format == 1.0, else -1 + format.

At the end, an independent re-statement of the reference (regex based, set-based F1) is
compared bit for bit with the implementation on random transcripts built from tag fragments.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
import time

import pytest
from promptr1.rewards import (
    ANSWER_METRICS,
    REWARD_VARIANTS,
    RewardBreakdown,
    RewardVariant,
    UnknownNameError,
    blocks_from_chatml,
    compute_reward,
    reference_score,
    register_reward_variant,
    unregister_reward_variant,
)

P = "<think>I should ask.</think><interaction_prompt>What is the capital of France?</interaction_prompt>"
TOOL_CALL = '{"name": "prompt", "arguments": {"prompt": "What is the capital of France?"}}'
P_JSON = "<think>ask</think><interaction_prompt>" + TOOL_CALL + "</interaction_prompt>"


def F(answer: str) -> str:
    """A well-formed final turn."""
    return f"<think>It said so.</think><answer>{answer}</answer>"


# (id, turns, golds, format, answer, faithful total)
CASES = [
    # ---- well-formed episodes, 1 to 5 turns
    ("1 turn: direct answer", [F("Paris")], "Paris", 0.6, 1.0, -0.4),
    ("2 turns: correct", [P, F("Paris")], "Paris", 1.0, 1.0, 1.0),
    ("3 turns: correct (1.05 capped)", [P, P, F("Paris")], "Paris", 1.0, 1.0, 1.0),
    ("4 turns: correct", [P, P, P, F("Paris")], ["Paris"], 1.0, 1.0, 1.0),
    ("5 turns: correct", [P, P, P, P, F("Paris")], ["Paris"], 1.0, 1.0, 1.0),
    ("2 turns: wrong answer", [P, F("Lyon")], "Paris", 1.0, 0.0, 0.0),
    ("2 turns: partial answer F1 2/3", [P, F("Paris France")], "Paris", 1.0, 2 / 3, 2 / 3),
    ("json tool call in prompt turn", [P_JSON, F("Paris")], "Paris", 1.0, 1.0, 1.0),
    # ---- the quirks (docs/reward.md)
    ("3 good prompts, then no answer", [P, P, P, P], "Paris", 1.0, 0.0, 0.0),
    ("3 good prompts, then garbage", [P, P, P, "I give up"], "Paris", 1.0, 0.0, 0.0),
    ("1 turn: direct wrong answer", [F("Lyon")], "Paris", 0.6, 0.0, -0.4),
    ("answer without think, not capped", [P, "<answer>Paris</answer>"], "Paris", 0.9, 1.0, -0.1),
    # ---- no turns / no tags
    ("no turns", [], "Paris", 0.0, 0.0, -1.0),
    ("one untagged turn", ["Paris"], "Paris", 0.0, 0.0, -1.0),
    ("think without answer", [P, "<think>hmm</think>"], "Paris", 0.4, 0.0, -0.6),
    ("truncated on a prompt turn", [P, P], "Paris", 0.4, 0.0, -0.6),
    ("2 good prompts, truncated", [P, P, P], "Paris", 0.8, 0.0, -0.2),
    # ---- empty / whitespace-only / duplicated answers
    ("empty answer", [P, F("")], "Paris", 0.4, 0.0, -0.6),
    ("whitespace-only answer", [P, F(" \n\t ")], "Paris", 0.4, 0.0, -0.6),
    (
        "first answer empty, second not",
        [P, "<think>t</think><answer></answer><answer>Paris</answer>"],
        "Paris",
        0.4,
        0.0,
        -0.6,
    ),
    (
        "two answers, first counts",
        [P, "<think>t</think><answer>Paris</answer><answer>Lyon</answer>"],
        "Paris",
        1.0,
        1.0,
        1.0,
    ),
    (
        "two answers, first wrong",
        [P, "<think>t</think><answer>Lyon</answer><answer>Paris</answer>"],
        "Paris",
        1.0,
        0.0,
        0.0,
    ),
    ("answer never closed", [P, "<think>t</think><answer>Paris"], "Paris", 0.4, 0.0, -0.6),
    ("answer close without open", [P, "<think>t</think>Paris</answer>"], "Paris", 0.4, 0.0, -0.6),
    ("upper-case answer tags", [P, "<think>t</think><ANSWER>Paris</ANSWER>"], "Paris", 0.4, 0.0, -0.6),
    # ---- malformed intermediate turns (0 for the turn)
    (
        "duplicated think",
        ["<think>a</think><think>b</think><interaction_prompt>q</interaction_prompt>", F("Paris")],
        "Paris",
        0.6,
        1.0,
        -0.4,
    ),
    (
        "nested think",
        ["<think><think>a</think></think><interaction_prompt>q</interaction_prompt>", F("Paris")],
        "Paris",
        0.6,
        1.0,
        -0.4,
    ),
    (
        "unbalanced think",
        ["<think>a<interaction_prompt>q</interaction_prompt>", F("Paris")],
        "Paris",
        0.6,
        1.0,
        -0.4,
    ),
    ("unclosed prompt", ["<think>a</think><interaction_prompt>q", F("Paris")], "Paris", 0.6, 1.0, -0.4),
    (
        "two prompts in one turn",
        [
            "<think>a</think><interaction_prompt>q</interaction_prompt>"
            + "<interaction_prompt>r</interaction_prompt>",
            F("Paris"),
        ],
        "Paris",
        0.6,
        1.0,
        -0.4,
    ),
    (
        "prompt before think",
        ["<interaction_prompt>q</interaction_prompt><think>a</think>", F("Paris")],
        "Paris",
        0.6,
        1.0,
        -0.4,
    ),
    (
        "text between think and prompt",
        ["<think>a</think>so<interaction_prompt>q</interaction_prompt>", F("Paris")],
        "Paris",
        0.6,
        1.0,
        -0.4,
    ),
    ("leading space", [" " + P, F("Paris")], "Paris", 0.6, 1.0, -0.4),
    ("leading newline", ["\n" + P, F("Paris")], "Paris", 0.6, 1.0, -0.4),
    ("text after prompt", [P + " ok", F("Paris")], "Paris", 0.6, 1.0, -0.4),
    ("answer instead of a prompt", [F("Paris"), F("Paris")], "Paris", 0.6, 1.0, -0.4),
    (
        "answer tag inside a prompt turn is fine",
        ["<think><answer>x</answer></think><interaction_prompt>q</interaction_prompt>", F("Paris")],
        "Paris",
        1.0,
        1.0,
        1.0,
    ),
    # ---- whitespace between and around tags
    (
        "newlines between think and prompt",
        ["<think>a</think>\n\n <interaction_prompt>q</interaction_prompt>", F("Paris")],
        "Paris",
        1.0,
        1.0,
        1.0,
    ),
    (
        "no-break space between tags (\\s is Unicode)",
        ["<think>a</think>\u00a0<interaction_prompt>q</interaction_prompt>", F("Paris")],
        "Paris",
        1.0,
        1.0,
        1.0,
    ),
    (
        "zero-width space between tags is not \\s",
        ["<think>a</think>\u200b<interaction_prompt>q</interaction_prompt>", F("Paris")],
        "Paris",
        0.6,
        1.0,
        -0.4,
    ),
    ("prompt turn + one trailing newline ($ quirk)", [P + "\n", F("Paris")], "Paris", 1.0, 1.0, 1.0),
    ("prompt turn + two trailing newlines", [P + "\n\n", F("Paris")], "Paris", 0.6, 1.0, -0.4),
    ("prompt turn + trailing CRLF", [P + "\r\n", F("Paris")], "Paris", 0.6, 1.0, -0.4),
    ("prompt turn + trailing space", [P + " ", F("Paris")], "Paris", 0.6, 1.0, -0.4),
    ("final + one trailing newline", [P, F("Paris") + "\n"], "Paris", 1.0, 1.0, 1.0),
    ("final + two trailing newlines", [P, F("Paris") + "\n\n"], "Paris", 0.9, 1.0, -0.1),
    ("final with text after answer", [P, F("Paris") + " done"], "Paris", 0.9, 1.0, -0.1),
    ("final with text before think", [P, "So: " + F("Paris")], "Paris", 0.9, 1.0, -0.1),
    (
        "final with text between think and answer",
        [P, "<think>t</think> so: <answer>Paris</answer>"],
        "Paris",
        1.0,
        1.0,
        1.0,
    ),
    ("final with whitespace inside answer", [P, F("\n  Paris  \n")], "Paris", 1.0, 1.0, 1.0),
    (
        "final with two thinks (no counts on the last turn)",
        [P, "<think>a</think><think>b</think><answer>Paris</answer>"],
        "Paris",
        1.0,
        1.0,
        1.0,
    ),
    ("final: answer before think", [P, "<answer>Paris</answer><think>t</think>"], "Paris", 0.9, 1.0, -0.1),
    # ---- gold answers
    ("several golds", [P, F("NYC")], ["New York City", "NYC"], 1.0, 1.0, 1.0),
    ("best of several golds", [P, F("New York City")], ["Big Apple", "New York"], 1.0, 0.8, 0.8),
    ("normalised match", [P, F("The Eiffel Tower.")], "eiffel tower", 1.0, 1.0, 1.0),
    ("unicode answer Zoë", [P, F("Zoë")], ["zoë"], 1.0, 1.0, 1.0),
    ("unicode answer 東京", [P, F("東京")], ["東京", "Tokyo"], 1.0, 1.0, 1.0),
    ("empty gold list", [P, F("Paris")], [], 1.0, 0.0, 0.0),
]


@pytest.mark.parametrize(
    "turns, golds, fmt, answer, total", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_faithful_known_answers(turns, golds, fmt: float, answer: float, total: float) -> None:
    r = compute_reward(turns, golds)
    assert r.format == pytest.approx(fmt, abs=1e-12)
    assert r.capped is (fmt == 1.0)
    if fmt == 1.0:
        assert r.format == 1.0  # exactly: the total depends on it
    assert r.answer == pytest.approx(answer, abs=1e-12)
    assert r.total == pytest.approx(total, abs=1e-12)
    assert reference_score(turns, golds) == r.total
    assert r.n_turns == len(turns)
    assert r.variant == "faithful"


# The format components, by hand: (turns, prompt part, tag, nonempty, think, raw, n prompt turns ok)
COMPONENT_CASES = [
    ([P, P, F("Paris")], 0.8, 0.25, 0.25, 0.1, 1.4, 2),
    ([P, "<answer>x</answer>"], 0.4, 0.25, 0.25, 0.0, 0.9, 1),
    ([P, P, P, P], 1.2, 0.0, 0.0, 0.0, 1.2, 3),
    ([F("x")], 0.0, 0.25, 0.25, 0.1, 0.6, 0),
    (["junk", P, F("")], 0.4, 0.0, 0.0, 0.0, 0.4, 1),
]


@pytest.mark.parametrize("turns, prompt, tag, nonempty, think, raw, n_ok", COMPONENT_CASES)
def test_components(turns, prompt, tag, nonempty, think, raw, n_ok) -> None:
    r = compute_reward(turns, "x")
    assert r.format_prompt_turns == pytest.approx(prompt)
    assert (r.format_answer_tag, r.format_answer_nonempty, r.format_think_answer) == (tag, nonempty, think)
    assert r.format_raw == pytest.approx(raw)
    assert r.format == min(r.format_raw, 1.0)
    assert r.n_prompt_turns_ok == n_ok


def test_bit_exact_cap_for_one_prompt_turn() -> None:
    # 0.4 + 0.25 + 0.25 + 0.1 must be exactly 1.0 (it is, in this order), or the answer is lost.
    r = compute_reward([P, F("Paris")], "Paris")
    assert r.format_raw == 1.0 and r.format == 1.0 and r.total == 1.0 and r.answer_counted


def test_breakdown_fields() -> None:
    r = compute_reward([P, F("Paris France")], ["Paris"])
    assert isinstance(r, RewardBreakdown)
    assert r.has_answer and r.answer_text == "Paris France"
    assert r.f1 == pytest.approx(2 / 3) and r.em == 0.0
    d = r.as_dict()
    assert d["total"] == r.total and d["answer_text"] == "Paris France"
    assert set(d) == {f.name for f in dataclasses.fields(RewardBreakdown)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.total = 0.0  # type: ignore[misc]
    no_answer = compute_reward([P, "<think>t</think>"], ["Paris"])
    assert no_answer.answer_text is None and not no_answer.has_answer and no_answer.f1 == 0.0
    empty = compute_reward([P, F("  ")], ["Paris"])
    assert empty.answer_text == "" and not empty.has_answer


# ------------------------------------------------------------------------------- answer_gated

GATED_CASES = [
    # (turns, golds, total): with an answer -1 + format + answer; without -1 + format / 2
    ([F("Paris")], "Paris", 0.6),  # honest direct answer: 0.6 (faithful: -0.4)
    ([F("Lyon")], "Paris", -0.4),
    ([P, P, P, P], "Paris", -0.5),  # three prompts and no answer: -0.5 (faithful: 0.0)
    ([P, P, P], "Paris", -0.6),
    ([P, "<think>t</think>"], "Paris", -0.8),
    ([], "Paris", -1.0),
    (["junk"], "Paris", -1.0),
    ([P, F("Paris")], "Paris", 1.0),
    ([P, P, F("Paris")], "Paris", 1.0),
    ([P, F("Lyon")], "Paris", 0.0),
    ([P, "<answer>Paris</answer>"], "Paris", 0.9),
    ([P, F("Paris France")], "Paris", 2 / 3),
    ([P, F("")], "Paris", -0.8),
]


@pytest.mark.parametrize("turns, golds, total", GATED_CASES)
def test_answer_gated_known_answers(turns, golds, total: float) -> None:
    r = compute_reward(turns, golds, variant="answer_gated")
    assert r.total == pytest.approx(total, abs=1e-12)
    assert r.variant == "answer_gated"
    assert r.answer_counted is r.has_answer


def test_answer_gated_fixes_the_quirks() -> None:
    honest = [F("Paris")]
    stalling = [P, P, P, P]
    assert reference_score(stalling, "Paris") > reference_score(honest, "Paris")  # the quirk
    gated = lambda turns: compute_reward(turns, "Paris", variant="answer_gated").total
    assert gated(honest) > gated(stalling)
    assert gated([F("Lyon")]) > gated(stalling)  # any answer beats no answer
    assert gated([P, F("Paris")]) > gated(honest)  # consulting the large LLM still pays


# ------------------------------------------------------------------------------ answer metrics


@pytest.mark.parametrize(
    "final, golds, metric, total",
    [
        (F("Paris France"), "Paris", "f1", 2 / 3),
        (F("Paris France"), "Paris", "em", 0.0),
        (F("paris."), "Paris", "em", 1.0),
        (F("It is Paris"), "Paris", "subem", 1.0),
        (F("\\boxed{1,000}"), "1000", "math", 1.0),
        (F("\\boxed{1,000}"), "1000", "f1", 0.0),  # "boxed1000" vs "1000"
        (F("0.5"), ["1/2"], "math", 1.0),
        (F("31"), "30", "math", 0.0),
    ],
)
def test_answer_metric(final: str, golds, metric: str, total: float) -> None:
    r = compute_reward([P, final], golds, answer_metric=metric)
    assert r.total == pytest.approx(total, abs=1e-12)
    assert r.answer_metric == metric


# -------------------------------------------------------------------------------------- errors


def test_none_and_bad_inputs_raise() -> None:
    with pytest.raises(TypeError, match="got None"):
        compute_reward([P], None)
    with pytest.raises(TypeError, match="turns must be a sequence.*got None"):
        compute_reward(None, "Paris")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="blocks_from_chatml"):
        compute_reward(F("Paris"), "Paris")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="turn #1 must be a str"):
        compute_reward([P, None], "Paris")  # type: ignore[list-item]
    with pytest.raises(TypeError, match="gold answer #0"):
        compute_reward([P], [None])


def test_turns_may_be_any_iterable() -> None:
    assert compute_reward(iter([P, F("Paris")]), "Paris").total == 1.0  # type: ignore[arg-type]
    assert compute_reward((P, F("Paris")), ("Paris",)).total == 1.0


def test_registries_answer_with_did_you_mean() -> None:
    with pytest.raises(
        UnknownNameError, match=r"unknown reward variant 'faithfull'\. Did you mean 'faithful'\?"
    ):
        compute_reward([P], "x", variant="faithfull")
    with pytest.raises(ValueError, match=r"Did you mean 'answer_gated'\?"):
        compute_reward([P], "x", variant="answer-gated")
    with pytest.raises(KeyError, match=r"unknown answer metric 'f11'\. Did you mean 'f1'\?"):
        compute_reward([P], "x", answer_metric="f11")
    with pytest.raises(UnknownNameError, match="Expected one of: answer_gated, cost_aware, faithful"):
        REWARD_VARIANTS["zzz"]
    assert "faithful" in REWARD_VARIANTS and "zzz" not in REWARD_VARIANTS
    assert REWARD_VARIANTS.get("zzz", None) is None
    assert set(ANSWER_METRICS) == {"f1", "em", "subem", "math", "ssim"}


def test_register_custom_variant() -> None:
    v = register_reward_variant("test_answer_only", lambda fmt, ans, has: (ans if has else -1.0, has))
    try:
        assert compute_reward([F("Paris")], "Paris", variant="test_answer_only").total == 1.0
        assert compute_reward([F("Paris")], "Paris", variant=v).total == 1.0
        with pytest.raises(ValueError, match="already registered"):
            register_reward_variant("test_answer_only", lambda f, a, h: (0.0, False))
    finally:
        unregister_reward_variant("test_answer_only")
    assert "test_answer_only" not in REWARD_VARIANTS
    inline = RewardVariant("inline", lambda f, a, h: (f, False), "format only")
    assert compute_reward([F("Paris")], "Paris", variant=inline).total == pytest.approx(0.6)
    with pytest.raises(ValueError, match="built in"):
        unregister_reward_variant("faithful")


# ---------------------------------------------------------------------------------- transcripts


def _chatml(turns: list[tuple[str, str]]) -> str:
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)


def test_blocks_from_chatml_scores_a_transcript() -> None:
    text = _chatml(
        [
            ("system", "You are a helpful assistant."),
            ("user", "Question: capital of France?"),
            ("assistant", P),
            ("user", "<interaction_response>Paris.</interaction_response>"),
            ("assistant", F("Paris")),
        ]
    )
    assert blocks_from_chatml(text) == [P, F("Paris")]
    assert reference_score(blocks_from_chatml(text), ["Paris"]) == 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", []),
        ("<|im_start|>assistant\n<|im_end|>", [""]),
        ("<|im_start|>assistant\nA<|im_end|><|im_start|>assistant\nB", ["A"]),  # unclosed block dropped
        ("<|im_start|>assistant A<|im_end|>", []),  # needs the newline after the role
        ("<|im_start|>assistant\nA\n<|im_start|>assistant\nB<|im_end|>", ["A\n<|im_start|>assistant\nB"]),
        ("<|im_start|>assistant\n\n\nA\n<|im_end|>", ["\n\nA\n"]),
    ],
)
def test_blocks_from_chatml_edge_cases(text: str, expected: list[str]) -> None:
    assert blocks_from_chatml(text) == expected
    assert blocks_from_chatml(text) == re.findall(
        r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", text, re.DOTALL
    )


# ------------------------------------------------------------------------ linear time on junk


@pytest.mark.parametrize(
    "final",
    [
        "<think>" + "</think><answer>" * 4000 + "x",  # cubic for the reference regex
        "<answer>" * 12_500,  # quadratic for the reference extraction regex
        "<think>" + "</think>" * 12_000 + "<answer>a</answer>\n\n",
    ],
)
def test_degenerate_long_turns_are_fast(final: str) -> None:
    turns = [final[:50_000], "<think>" * 5000 + "<interaction_prompt>", final]
    # A hang guard, not a speed target: the linear parsing takes under a millisecond on these inputs (0.3 ms here),
    # the reference's cubic / quadratic regexes are many orders of magnitude slower; 10 s tells the two apart on
    # any machine, however busy.
    t0 = time.perf_counter()
    r = compute_reward(turns, "a")
    assert time.perf_counter() - t0 < 10
    assert -1.0 <= r.total <= 1.0
    text = "<|im_start|>assistant\n" * 20_000
    t0 = time.perf_counter()
    assert blocks_from_chatml(text) == []
    assert time.perf_counter() - t0 < 10


# ------------------------------------------- cross-check with a re-statement of the reference

_REF_BLOCKS = re.compile(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", re.DOTALL)
_REF_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_REF_PROMPT = re.compile(
    r"^<think>(.*?)</think>(\s*)<interaction_prompt>(.*?)</interaction_prompt>$", re.DOTALL
)
_REF_FINAL = re.compile(r"^<think>(.*?)</think>(.*?)<answer>(.*?)</answer>$", re.DOTALL)


def _ref_normalize(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _ref_f1(pred: str, golds) -> float:
    golds = [golds] if isinstance(golds, str) else golds
    best = 0.0
    p = _ref_normalize(pred).split()
    for gold in golds:
        g = _ref_normalize(gold).split()
        same = sum(min(p.count(w), g.count(w)) for w in set(p) & set(g))
        f1 = 0.0 if same == 0 else 2 * (same / len(p)) * (same / len(g)) / (same / len(p) + same / len(g))
        best = max(best, f1)
    return best


def _ref_score(transcript: str, golds) -> tuple[float, float]:
    """(total, format) as the reference computes them from a ChatML transcript."""
    blocks = _REF_BLOCKS.findall(transcript)
    fmt = 0.0
    answer = 0.0
    if blocks:
        for b in blocks[:-1]:
            tags_once = all(
                b.count(t) == 1
                for t in ("<think>", "</think>", "<interaction_prompt>", "</interaction_prompt>")
            )
            if tags_once and _REF_PROMPT.search(b):
                fmt += 0.4
        last = blocks[-1]
        m = _REF_ANSWER.search(last)
        if m and m.group(1).strip():
            fmt += 0.25
            content = m.group(1).strip()
            if content and len(content.strip()) > 0:
                fmt += 0.25
            if _REF_FINAL.search(last):
                fmt += 0.1
            answer = _ref_f1(content, golds)
    fmt = min(fmt, 1.0)
    total = -1.0 + fmt + answer if fmt == 1.0 else -1.0 + fmt
    return total, fmt


_FRAGMENTS = [
    "<think>",
    "</think>",
    "<interaction_prompt>",
    "</interaction_prompt>",
    "<answer>",
    "</answer>",
    "Paris",
    "paris.",
    "the",
    "Lyon",
    "France",
    " ",
    "\n",
    "\t",
    "\u00a0",
    "x",
    "",
    "<think",
    "answer>",
    '{"name": "prompt"}',
    "<|im_end|>",
]
_WORDS = ["Paris", "paris.", "the", "Lyon", "France", " ", "\n", "x", ""]
_SHAPES = [
    "<think>{a}</think>{ws}<interaction_prompt>{b}</interaction_prompt>{tail}",
    "<think>{a}</think>{b}<answer>{c}</answer>{tail}",
    "{a}<think>{b}</think><answer>{c}</answer>{tail}",
    "<think>{a}</think>{ws}<interaction_prompt>{b}</interaction_prompt>{c}</interaction_prompt>",
    "{a}{b}{c}",
]


def _random_turn(rng: random.Random, last: bool) -> str:
    def junk() -> str:
        pool = _FRAGMENTS if rng.random() < 0.3 else _WORDS  # mostly plain text, sometimes stray tags
        return "".join(rng.choice(pool) for _ in range(rng.randint(0, 4)))

    # Mostly the shape the position calls for (a prompt turn, or a final answer), else any shape.
    shape = rng.choice(_SHAPES) if rng.random() < 0.3 else _SHAPES[1] if last else _SHAPES[0]
    return shape.format(
        a=junk(),
        b=junk(),
        c=junk(),
        ws=rng.choice(["", " ", "\n", "\u00a0", "x"]),
        tail=rng.choice(["", "", "\n", "\n\n", " ", junk()]),
    )


def test_matches_reference_restatement_on_random_transcripts() -> None:
    rng = random.Random(20251102)
    golds_pool = ["Paris", ["Paris", "Lyon"], ["the France"], "x", []]
    n_capped = n_answer = 0
    for _ in range(4000):
        n = rng.randint(0, 5)
        turns = [_random_turn(rng, last=i == n - 1) for i in range(n)]
        turns = [t for t in turns if "<|im_end|>" not in t]  # a turn cannot contain its own end marker
        golds = rng.choice(golds_pool)
        transcript = "<|im_start|>system\nS<|im_end|>\n" + "".join(
            f"<|im_start|>assistant\n{t}<|im_end|>\n<|im_start|>user\nR<|im_end|>\n" for t in turns
        )
        assert blocks_from_chatml(transcript) == turns
        want_total, want_format = _ref_score(transcript, golds)
        got = compute_reward(turns, golds)
        assert (got.total, got.format) == (want_total, want_format), turns  # bit for bit
        n_capped += got.capped
        n_answer += got.has_answer
    assert n_capped > 300 and n_answer > 1000  # the grammar reaches the interesting branches


def test_linear_think_answer_check_matches_the_regex() -> None:
    from promptr1.rewards.dual import _is_think_answer

    rng = random.Random(7)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "\n", "a", "</answer>\n", "<think></think>"]
    for _ in range(20_000):
        block = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 7)))
        assert _is_think_answer(block) is bool(_REF_FINAL.search(block)), repr(block)
