"""Known-answer tests for promptr1.rewards.metrics (expected values computed by hand)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from promptr1.rewards.metrics import (
    exact_match,
    extract_answer,
    math_equal,
    normalize_answer,
    numeric_match,
    parse_number,
    substring_match,
    token_f1,
)

# --------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Paris", "paris"),
        ("  The   Eiffel Tower ", "eiffel tower"),
        ("An apple a day", "apple day"),
        ("U.S.A.", "usa"),
        ("rock'n'roll!", "rocknroll"),
        # Punctuation goes before articles: "A.B." -> "ab" (articles first would give "b").
        ("A.B.", "ab"),
        # ... and "an't" -> "ant" (articles first would give "t").
        ("an't", "ant"),
        ("the.", ""),
        ("There another", "there another"),  # articles only as whole words
        ("Zoë", "zoë"),
        ("東京", "東京"),
        # Non-ASCII punctuation is kept, and is a word boundary for the article regex.
        ("a—b", "—b"),
        ("Tab\tand\nnewline", "tab and newline"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_normalize_answer_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="expects a str"):
        normalize_answer(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ token F1


@pytest.mark.parametrize(
    "pred, golds, expected",
    [
        ("Paris", "Paris", 1.0),
        ("Paris", "paris.", 1.0),
        ("Barack Obama", "Obama", 2 / 3),  # P = 1/2, R = 1
        ("Obama", "Barack Obama", 2 / 3),  # P = 1, R = 1/2
        ("the cat sat", "cat sat on mat", 2 / 3),  # P = 2/2, R = 2/4
        ("New York City", ["Big Apple", "New York"], 0.8),  # best gold: P = 2/3, R = 1
        ("x x y", "x y y", 2 / 3),  # multiset overlap = min(2,1) + min(1,2) = 2 of 3
        ("x x x", "x", 0.5),  # overlap 1: P = 1/3, R = 1
        ("Lyon", ["Paris", "Marseille"], 0.0),
        ("the", "the", 0.0),  # both normalise to no tokens: no overlap
        ("", "Paris", 0.0),
        ("Paris", [], 0.0),
        ("Zoë", "zoë", 1.0),
        ("東京 タワー", "東京", 2 / 3),
        ("東京", "東京都", 0.0),  # no tokenisation inside CJK words
        ("Paris", ("London", "Paris"), 1.0),
        ("Paris", np.array(["London", "Paris"]), 1.0),  # as stored in parquet rows
        ("72", 72, 1.0),  # a numeric gold is converted with str
        ("72", [72.0], 0.0),  # "72.0" normalises to "720"
    ],
)
def test_token_f1(pred, golds, expected: float) -> None:
    assert token_f1(pred, golds) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------- EM / SubEM


@pytest.mark.parametrize(
    "pred, golds, em, subem",
    [
        ("The Eiffel Tower.", "eiffel tower", 1.0, 1.0),
        ("Eiffel Tower in Paris", "Eiffel Tower", 0.0, 1.0),
        ("Tower", "Eiffel Tower", 0.0, 0.0),
        ("17", "7", 0.0, 1.0),  # substring, not word-aligned (as the reference)
        ("NYC", ["New York City", "nyc"], 1.0, 1.0),
        ("Zoë Saldana", ["ZOË SALDANA"], 1.0, 1.0),
        ("Paris", [], 0.0, 0.0),
        ("anything", "the", 0.0, 1.0),  # a gold that normalises to "" is in every string
    ],
)
def test_exact_and_substring_match(pred: str, golds, em: float, subem: float) -> None:
    assert exact_match(pred, golds) == em
    assert substring_match(pred, golds) == subem


@pytest.mark.parametrize("fn", [token_f1, exact_match, substring_match, numeric_match])
def test_metrics_validate_golds(fn) -> None:
    with pytest.raises(TypeError, match="got None"):
        fn("Paris", None)
    with pytest.raises(TypeError, match="decode"):
        fn("Paris", b"Paris")
    with pytest.raises(TypeError, match=r"gold answer #1 must be a str"):
        fn("Paris", ["Paris", {"a": 1}])
    with pytest.raises(TypeError, match="iterable of str; got object"):
        fn("Paris", object())
    with pytest.raises(TypeError, match="prediction as a str"):
        fn(None, "Paris")


# ------------------------------------------------------------------------------ answer extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>t</think><answer>Paris</answer>", "Paris"),
        ("<answer>  Paris \n</answer>", "Paris"),
        ("<answer>multi\nline</answer>", "multi\nline"),
        ("<answer>first</answer><answer>second</answer>", "first"),
        ("<answer></answer><answer>second</answer>", ""),  # the first match wins even if empty
        ("<answer>   </answer>", ""),
        ("<answer><answer>x</answer></answer>", "<answer>x"),  # nested: up to the first close
        ("</answer><answer>x</answer>", "x"),
        ("<answer>x", None),
        ("x</answer>", None),
        ("<answer>a<answer>b", None),
        ("no tags", None),
        ("", None),
        ("<ANSWER>x</ANSWER>", None),  # tags are case-sensitive
        ("<answer>Zoë 東京</answer>", "Zoë 東京"),
    ],
)
def test_extract_answer(text: str, expected) -> None:
    assert extract_answer(text) == expected


# ------------------------------------------------------------------------------------------ math


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30", Fraction(30)),
        ("30.0", Fraction(30)),
        ("-7", Fraction(-7)),
        ("\u22127", Fraction(-7)),  # Unicode minus
        ("+2", Fraction(2)),
        (".5", Fraction(1, 2)),
        ("1e3", Fraction(1000)),
        ("1,000", Fraction(1000)),
        ("1,234,567.25", Fraction(123456725, 100)),
        ("$30", Fraction(30)),
        ("\\$30", Fraction(30)),
        ("$\\frac{1}{2}$", Fraction(1, 2)),
        ("\\boxed{30}", Fraction(30)),
        ("The answer is \\boxed{\\frac{3}{4}}.", Fraction(3, 4)),
        ("\\boxed{\\dfrac{-3}{4}}", Fraction(-3, 4)),
        ("-\\frac{1}{2}", Fraction(-1, 2)),
        ("\\frac12", Fraction(1, 2)),
        ("1/2", Fraction(1, 2)),
        ("-3/4", Fraction(-3, 4)),
        ("30%", Fraction(30)),
        ("30\\%", Fraction(30)),
        ("90^\\circ", Fraction(90)),
        ("90°", Fraction(90)),
        ("5\\text{ cm}", Fraction(5)),
        ("x = 4", Fraction(4)),
        ("12.", Fraction(12)),
        ("1{,}000", Fraction(1000)),
        ("1/0", None),
        ("12 apples", None),
        ("1,00", None),  # not a thousands grouping
        ("nan", None),
        ("inf", None),
        ("\\sqrt{2}", None),
        ("", None),
    ],
)
def test_parse_number(text: str, expected) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("30", "30", True),
        ("30.0", "30", True),
        ("$30", "30", True),
        ("\\boxed{30}", "30", True),
        ("1,000", "1000", True),
        ("1000", "1,000", True),
        ("30%", "30", True),  # documented decision: the percent sign is dropped ...
        ("30%", "0.3", False),  # ... and the value is not divided by 100
        ("-5", "-5", True),
        ("-5", "5", False),
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{2}{4}", "1/2", True),
        ("0.333", "1/3", False),  # exact comparison, no tolerance
        ("31", "30", False),
        ("x = 4", "4", True),
        ("\\sqrt{2}", "\\sqrt{2}", True),  # not numbers: whitespace-free lower-case text
        ("\\sqrt{ 2 }", "\\sqrt{2}", True),
        ("x=-3", "x=3", False),  # the "x =" prefix is dropped on both sides: -3 != 3
        ("Yes", "yes", True),
        ("30 apples", "30", False),  # no free-text number extraction
        ("three", "3", False),
    ],
)
def test_math_equal(pred: str, gold: str, expected: bool) -> None:
    assert math_equal(pred, gold) is expected


def test_numeric_match_any_gold() -> None:
    assert numeric_match("\\boxed{72}", ["seventy-two", "72"]) == 1.0
    assert numeric_match("71", ["seventy-two", "72"]) == 0.0
    assert numeric_match("0.5", "1/2") == 1.0
    assert numeric_match("72", 72) == 1.0
    with pytest.raises(TypeError, match="two str"):
        math_equal(72, "72")  # type: ignore[arg-type]
