"""Answer metrics: SQuAD normalisation, token F1, exact and substring match, math equivalence.

Two metric sets score an evaluation (:data:`METRIC_SETS`, chosen with ``--metrics``): ``ours``
(the default) and ``reference``, the official evaluation script's (``eval_scores.py`` of the
Prompt-R1 code) reproduced exactly: its rules for empty answers included, and no numeric
equivalence for math (see ``docs/evaluation.md``).

Every function here is pure and cheap. The QA metrics reproduce the ones the Prompt-R1
reference uses to score answers (docs/reward.md): text is lower-cased, stripped of ASCII
punctuation and of the articles *a*, *an*, *the*, and its whitespace is folded, in that order.

Gold answers (``golds``) are a single string or an iterable of strings (a list, a tuple, a
NumPy array of strings as stored in the parquet files). A gold given as a number (``72``)
is converted with ``str``. Every metric takes the best score over the gold answers, and an
empty collection of gold answers scores 0.0, as in the reference.

>>> token_f1("the Eiffel Tower, Paris", ["Eiffel Tower"])
0.8
>>> numeric_match(r"\\boxed{1,000}", "1000")
1.0
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real

from promptr1.core.registry import Registry, resolve_reference
from promptr1.core.tags import ANSWER_CLOSE, ANSWER_OPEN

__all__ = [
    "Golds",
    "METRIC_SETS",
    "MetricSet",
    "either_way_substring_match",
    "exact_match",
    "extract_answer",
    "math_equal",
    "math_exact_match",
    "normalize_answer",
    "numeric_match",
    "parse_number",
    "reference_exact_match",
    "reference_math_exact_match",
    "reference_substring_match",
    "reference_token_f1",
    "substring_match",
    "token_f1",
]

Golds = str | Iterable[str]

# ---------------------------------------------------------------------------------------------
# SQuAD normalisation
# ---------------------------------------------------------------------------------------------

# Deleting through a translation table removes exactly the characters of string.punctuation
# (the 32 ASCII punctuation marks), like a per-character filter, only faster.
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD-normalise ``s``: lower-case, drop punctuation, drop articles, fold whitespace.

    The steps run in the reference's order. Articles are replaced by a space (so that
    ``"a-b"`` style joins do not glue words), and punctuation goes before articles, so
    ``"the."`` loses its article too.

    >>> normalize_answer("  The  Eiffel-Tower! ")
    'eiffeltower'
    >>> normalize_answer("An apple a day")
    'apple day'
    >>> normalize_answer("Zoë, 東京")
    'zoë 東京'
    """
    if not isinstance(s, str):
        raise TypeError(
            f"normalize_answer expects a str; got {type(s).__name__}. Convert it with str() first."
        )
    text = s.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


#: Gold answers come back episode after episode (a group's rollouts share their task): each is normalised once.
_normalized_gold = functools.lru_cache(maxsize=8192)(normalize_answer)


def _as_golds(golds: object) -> tuple[str, ...]:
    """Validate gold answers and return them as a tuple of str (numbers converted with str)."""
    if type(golds) is tuple and all(type(g) is str for g in golds):
        return golds  # the common case (a Task's answers), already what is returned
    if golds is None:
        raise TypeError(
            "gold answers must be a str or an iterable of str; got None. "
            "Pass the task's answers, e.g. ('Paris',) or 'Paris'."
        )
    if isinstance(golds, str):
        return (golds,)
    if isinstance(golds, (bytes, bytearray)):
        raise TypeError("gold answers must be str, not bytes; decode them first, e.g. golds.decode('utf-8').")
    if isinstance(golds, Real) and not isinstance(golds, bool):
        return (str(golds),)
    try:
        items = tuple(golds)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"gold answers must be a str or an iterable of str; got {type(golds).__name__}."
        ) from None
    out: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Real) and not isinstance(item, bool):
            out.append(str(item))
        else:
            raise TypeError(
                f"gold answer #{i} must be a str (or a number); got {type(item).__name__}: {item!r}."
            )
    return tuple(out)


def _check_pred(pred: object, fn: str) -> str:
    if not isinstance(pred, str):
        raise TypeError(f"{fn} expects the prediction as a str; got {type(pred).__name__}.")
    return pred


def _overlap(pred_tokens: list[str], gold_tokens: list[str]) -> int:
    """Size of the multiset intersection of the two token lists."""
    remaining: dict[str, int] = {}
    for token in gold_tokens:
        remaining[token] = remaining.get(token, 0) + 1
    n_same = 0
    for token in pred_tokens:
        left = remaining.get(token, 0)
        if left:
            remaining[token] = left - 1
            n_same += 1
    return n_same


def _f1_from_tokens(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    n_same = _overlap(pred_tokens, gold_tokens)
    if n_same == 0:
        return 0.0
    precision = n_same / len(pred_tokens)
    recall = n_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _f1_and_em(pred: str, golds: tuple[str, ...]) -> tuple[float, float]:
    """Best token F1 and exact match over validated golds, normalising each string once."""
    norm_pred = normalize_answer(pred)
    pred_tokens = norm_pred.split()
    best_f1 = em = 0.0
    for gold in golds:
        norm_gold = _normalized_gold(gold)
        if norm_gold == norm_pred:
            em = 1.0
        best_f1 = max(best_f1, _f1_from_tokens(pred_tokens, norm_gold.split()))
    return best_f1, em


def token_f1(pred: str, golds: Golds) -> float:
    """Best SQuAD token F1 of ``pred`` against the gold answers.

    Tokens are the whitespace-separated words of the normalised strings; overlap counts
    repeated words as often as both sides have them. No overlap (including an empty side)
    scores 0.0.

    >>> token_f1("Barack Obama", "Obama")
    0.6666666666666666
    >>> token_f1("Obama", ["George Bush", "Barack Obama"])
    0.6666666666666666
    >>> token_f1("the", "the")  # both normalise to nothing: no overlap
    0.0
    >>> token_f1("Paris", [])
    0.0
    """
    pred_tokens = normalize_answer(_check_pred(pred, "token_f1")).split()
    best = 0.0
    for gold in _as_golds(golds):
        best = max(best, _f1_from_tokens(pred_tokens, normalize_answer(gold).split()))
    return best


def exact_match(pred: str, golds: Golds) -> float:
    """1.0 if the normalised ``pred`` equals any normalised gold answer, else 0.0.

    >>> exact_match("The Eiffel Tower.", ["eiffel tower"])
    1.0
    >>> exact_match("Eiffel Tower in Paris", "Eiffel Tower")
    0.0
    """
    norm = normalize_answer(_check_pred(pred, "exact_match"))
    return 1.0 if any(normalize_answer(g) == norm for g in _as_golds(golds)) else 0.0


def substring_match(pred: str, golds: Golds) -> float:
    """1.0 if any normalised gold answer occurs inside the normalised ``pred``, else 0.0.

    This is a plain substring test on the normalised text, as in the reference, so it is
    not word-aligned: ``"7"`` occurs in ``"17"``.

    >>> substring_match("It is the Eiffel Tower, in Paris", "Eiffel Tower")
    1.0
    >>> substring_match("Paris", ["London", "Rome"])
    0.0
    >>> substring_match("17", "7")
    1.0
    """
    norm = normalize_answer(_check_pred(pred, "substring_match"))
    return 1.0 if any(normalize_answer(g) in norm for g in _as_golds(golds)) else 0.0


def either_way_substring_match(pred: str, golds: Golds) -> float:
    """SM as our evaluation reports it: 1.0 if, after normalisation, a gold answer occurs inside ``pred``
    or ``pred`` occurs inside a gold answer; else 0.0.

    Both directions, as the reference's evaluation script, but stricter on empty text: a prediction
    that normalises to nothing scores 0.0 (the reference gives it 1.0, since the empty string occurs
    in every gold answer), and a gold answer that normalises to nothing matches nothing.

    >>> either_way_substring_match("It is the Eiffel Tower", "Eiffel Tower")  # gold inside the prediction
    1.0
    >>> either_way_substring_match("Paris", "Paris, France")  # prediction inside the gold
    1.0
    >>> either_way_substring_match("Lyon", ["Paris", "Rome"])
    0.0
    >>> either_way_substring_match("", "Paris"), either_way_substring_match("The.", "Paris")
    (0.0, 0.0)
    """
    norm = normalize_answer(_check_pred(pred, "either_way_substring_match"))
    if not norm:
        return 0.0
    for gold in _as_golds(golds):
        g = normalize_answer(gold)
        if g and (g in norm or norm in g):
            return 1.0
    return 0.0


# ---------------------------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------------------------

_OPEN, _CLOSE = ANSWER_OPEN, ANSWER_CLOSE


def extract_answer(text: str) -> str | None:
    """Content of the first ``<answer>...</answer>`` in ``text``, stripped; None if there is none.

    Same result as the reference's ``re.search(r'<answer>(.*?)</answer>', text, re.DOTALL)``
    (the earliest opening tag that has a closing tag after it, up to the first such closing
    tag), computed with two ``str.find`` calls so it stays linear on long degenerate output
    (the regex is quadratic when many ``<answer>`` tags have no closing tag).

    >>> extract_answer("<think>hmm</think><answer> Paris </answer>")
    'Paris'
    >>> extract_answer("<answer></answer><answer>late</answer>")
    ''
    >>> extract_answer("<answer>never closed") is None
    True
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str; got {type(text).__name__}.")
    start = text.find(_OPEN)
    if start < 0:
        return None
    # If the first opening tag has no closing tag after it, no later opening tag has one either.
    end = text.find(_CLOSE, start + len(_OPEN))
    if end < 0:
        return None
    return text[start + len(_OPEN) : end].strip()


# ---------------------------------------------------------------------------------------------
# Math equivalence
# ---------------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT_UNIT = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\s*\{[^{}]*\}\s*$")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_LATEX_SPACING = re.compile(r"\\[,;:! ]|\\(?:left|right|displaystyle)\b|\\quad|\\qquad")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_VAR_PREFIX = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_SLASH_FRACTION = re.compile(r"([+-]?)\s*([^/\s]+)\s*/\s*([^/\s]+)")
_LATEX_FRACTION = re.compile(r"([+-]?)\s*\\[dt]?frac\s*(?:\{([^{}]+)\}|(\d))\s*(?:\{([^{}]+)\}|(\d))")


def _last_boxed(s: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None."""
    matches = list(_BOXED.finditer(s))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return s[start:i]
    return None


def _strip_math(s: str) -> str:
    """Remove the LaTeX and typographic wrapping around a final math answer."""
    boxed = _last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.replace("{,}", ",").replace("\\$", "").replace("$", "").replace("\\%", "%")
    s = s.replace("\u2212", "-")  # Unicode minus sign
    s = _TEXT_UNIT.sub("", s)  # "5\text{ cm}": a unit after a number
    s = _TEXT.sub(r"\1", s)
    s = _LATEX_SPACING.sub("", s)
    s = _DEGREES.sub("", s)
    s = s.strip().rstrip(".").strip()
    s = _VAR_PREFIX.sub("", s)
    if s.endswith("%"):
        s = s[:-1].strip()
    return s


def _plain_number(s: str) -> Fraction | None:
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _NUMBER.fullmatch(s):
        return Fraction(s)
    return None


def parse_number(s: str) -> Fraction | None:
    """Read ``s`` as an exact number after stripping math wrapping; None if it is not one.

    Understands integers, decimals, scientific notation, thousands separators
    (``1,000``), signs (including the Unicode minus), ``a/b``, ``\\frac{a}{b}``
    (and ``\\dfrac``, ``\\tfrac``, ``\\frac12``), ``$``, ``\\boxed{}``, ``\\text{}``
    (a ``\\text{unit}`` after a number is dropped), a trailing ``%`` or degree sign
    (dropped, see :func:`math_equal`), a trailing period and a leading ``x =``.

    >>> parse_number(r"$\\boxed{-\\frac{1}{2}}$")
    Fraction(-1, 2)
    >>> parse_number("1,234.5")
    Fraction(2469, 2)
    >>> parse_number("12 apples") is None
    True
    """
    if not isinstance(s, str):
        raise TypeError(f"parse_number expects a str; got {type(s).__name__}.")
    return _parse_stripped(_strip_math(s))


def _parse_stripped(s: str) -> Fraction | None:
    value = _plain_number(s)
    if value is not None:
        return value
    m = _LATEX_FRACTION.fullmatch(s) or _SLASH_FRACTION.fullmatch(s)
    if m is None:
        return None
    if m.re is _LATEX_FRACTION:
        sign, num_text, den_text = m.group(1), m.group(2) or m.group(3), m.group(4) or m.group(5)
    else:
        sign, num_text, den_text = m.group(1), m.group(2), m.group(3)
    num, den = _plain_number(num_text.strip()), _plain_number(den_text.strip())
    if num is None or den is None or den == 0:
        return None
    value = num / den
    return -value if sign == "-" else value


def _math_text(s: str) -> str:
    return "".join(s.lower().split())


def math_equal(pred: str, gold: str) -> bool:
    """Whether ``pred`` and ``gold`` are the same final math answer.

    Both sides are unwrapped (``\\boxed{}``, ``$``, ``\\text{}``, spacing commands, a trailing
    period, a leading ``x =``) and read as exact numbers (:func:`parse_number`); two numbers
    are equal when their exact values are (``0.5 == 1/2 == \\frac{1}{2}``, ``30 == 30.0``).
    Otherwise the unwrapped strings are compared lower-cased with all whitespace removed
    (not SQuAD-normalised: punctuation such as a minus sign matters in math).

    Percentages: a trailing ``%`` is dropped, so ``30%`` equals ``30`` but not ``0.3``
    (datasets such as GSM8K store the number a percentage question asks for).

    >>> math_equal("$30", "30.0")
    True
    >>> math_equal(r"\\boxed{\\frac{1}{2}}", "0.5")
    True
    >>> math_equal("1,000", "1000")
    True
    >>> math_equal("30%", "30"), math_equal("30%", "0.3")
    (True, False)
    >>> math_equal("-3", "3")
    False
    >>> math_equal(r"x = \\sqrt{2}", r"\\sqrt{2}")
    True
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        raise TypeError(f"math_equal expects two str; got {type(pred).__name__} and {type(gold).__name__}.")
    p, g = _strip_math(pred), _strip_math(gold)
    pn, gn = _parse_stripped(p), _parse_stripped(g)
    if pn is not None and gn is not None:
        return pn == gn
    if pn is not None or gn is not None:
        return False
    return _math_text(p) == _math_text(g)


def numeric_match(pred: str, golds: Golds) -> float:
    """1.0 if ``pred`` is :func:`math_equal` to any gold answer, else 0.0.

    >>> numeric_match("The answer is 72", ["72"])  # no free-text number extraction
    0.0
    >>> numeric_match(r"\\boxed{72}", ["72", "seventy-two"])
    1.0
    """
    _check_pred(pred, "numeric_match")
    return 1.0 if any(math_equal(pred, g) for g in _as_golds(golds)) else 0.0


def math_exact_match(pred: str, golds: Golds) -> float:
    """Our math EM: 1.0 if ``pred`` equals a gold answer, else 0.0. Two numbers are equal when their values are
    (:func:`math_equal`); otherwise the texts are compared by :func:`math_equal` and after SQuAD normalisation.

    Numbers are never compared as normalised text, which deletes the decimal point: ``"3.0"`` is not ``"30"``.

    >>> math_exact_match("30.0", "30"), math_exact_match(r"\\boxed{30}", "30"), math_exact_match("1/2", "0.5")
    (1.0, 1.0, 1.0)
    >>> math_exact_match("3.0", "30"), math_exact_match("31", "30")
    (0.0, 0.0)
    >>> math_exact_match("The Yes.", ["yes"])  # not numbers: SQuAD normalisation still applies
    1.0
    """
    _check_pred(pred, "math_exact_match")
    pred_number = parse_number(pred)
    for gold in _as_golds(golds):
        if math_equal(pred, gold):
            return 1.0
        if pred_number is None or parse_number(gold) is None:
            if exact_match(pred, gold):
                return 1.0
    return 0.0


# ---------------------------------------------------------------------------------------------
# The reference evaluation's metrics (its eval_scores.py), exactly
# ---------------------------------------------------------------------------------------------
#
# The official evaluation script scores every prediction against each gold answer and keeps the
# best, starting from 0 (so no gold answers score 0). Its normalisation is the SQuAD one above.
# Where it differs from ours is on empty text and on math; the doctests below are worked out by
# hand from its definitions.


def reference_exact_match(pred: str, golds: Golds) -> float:
    """The reference's EM: 1.0 if the normalised ``pred`` equals a normalised gold answer.

    The same test as :func:`exact_match`; the reference applies it to math answers too, where
    normalisation deletes the decimal point and every other punctuation mark (see
    :func:`reference_math_exact_match`). A prediction that normalises to nothing matches a gold
    answer that does too.

    >>> reference_exact_match("The Eiffel Tower.", ["eiffel tower"])
    1.0
    >>> reference_exact_match("", "Paris"), reference_exact_match("", "The")
    (0.0, 1.0)
    """
    return exact_match(_check_pred(pred, "reference_exact_match"), golds)


def reference_math_exact_match(pred: str, golds: Golds) -> float:
    """The reference's math EM: plain EM on SQuAD-normalised text, no numeric equivalence.

    Normalisation drops ``.``, ``/``, ``\\``, ``{`` and ``}``: ``"30.0"`` becomes ``"300"``,
    ``\\boxed{30}`` becomes ``"boxed30"``, ``"1/2"`` becomes ``"12"`` and ``"0.5"`` becomes ``"05"``,
    so none of them equals its gold answer, while ``"3.0"`` equals ``"30"``.

    >>> reference_math_exact_match("30.0", "30"), reference_math_exact_match(r"\\boxed{30}", "30")
    (0.0, 0.0)
    >>> reference_math_exact_match("1/2", "0.5"), reference_math_exact_match("3.0", "30")
    (0.0, 1.0)
    >>> reference_math_exact_match("30", ["30"])
    1.0
    """
    return exact_match(_check_pred(pred, "reference_math_exact_match"), golds)


def reference_substring_match(pred: str, golds: Golds) -> float:
    """The reference's SM: 1.0 if, after normalisation, a gold answer occurs in ``pred`` or ``pred``
    occurs in a gold answer.

    The empty string occurs in every string, so a prediction that normalises to nothing scores 1.0
    against any gold answer.

    >>> reference_substring_match("It is the Eiffel Tower", "Eiffel Tower")
    1.0
    >>> reference_substring_match("Paris", "Paris, France")
    1.0
    >>> reference_substring_match("Lyon", "Paris")
    0.0
    >>> reference_substring_match("", "Paris"), reference_substring_match("", [])
    (1.0, 0.0)
    """
    norm = normalize_answer(_check_pred(pred, "reference_substring_match"))
    for gold in _as_golds(golds):
        g = normalize_answer(gold)
        if g in norm or norm in g:
            return 1.0
    return 0.0


def reference_token_f1(pred: str, golds: Golds) -> float:
    """The reference's F1: token F1 as :func:`token_f1`, except that a prediction and a gold answer
    that both normalise to nothing score 1.0.

    >>> reference_token_f1("Barack Obama", "Obama")
    0.6666666666666666
    >>> reference_token_f1("", ""), reference_token_f1("the", "a")  # both empty after normalisation
    (1.0, 1.0)
    >>> reference_token_f1("", "Paris"), reference_token_f1("Paris", [])
    (0.0, 0.0)
    """
    pred_tokens = normalize_answer(_check_pred(pred, "reference_token_f1")).split()
    best = 0.0
    for gold in _as_golds(golds):
        gold_tokens = normalize_answer(gold).split()
        score = 1.0 if not pred_tokens and not gold_tokens else _f1_from_tokens(pred_tokens, gold_tokens)
        best = max(best, score)
    return best


# ---------------------------------------------------------------------------------------------
# Metric sets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSet:
    """How an evaluation scores a prediction: a function for each metric, and the rule for empty predictions.

    ``metrics`` maps ``em``, ``sm``, ``f1`` (QA), ``math_em`` (math) and ``ssim`` (text) to a function
    ``fn(pred, golds)`` (``ssim`` also takes ``embedder=``), or to a lazy ``"module:attribute"``.
    ``empty_scores_zero``: a prediction that is empty or blank scores 0 on every metric.
    """

    name: str
    description: str
    metrics: Mapping[str, Callable[..., float] | str]
    empty_scores_zero: bool

    def fn(self, metric: str) -> Callable[..., float]:
        """The function of ``metric`` (``em``, ``sm``, ``f1``, ``math_em``, ``ssim``).

        >>> METRIC_SETS["reference"].fn("sm")("", "Paris")
        1.0
        """
        if metric not in self.metrics:
            raise KeyError(f"metric set {self.name!r} has no metric {metric!r}; it has {sorted(self.metrics)}.")
        entry = self.metrics[metric]
        return resolve_reference(entry) if isinstance(entry, str) else entry


#: The metric sets an evaluation can use (``--metrics NAME``): ``ours`` (default) and ``reference``.
METRIC_SETS: Registry[MetricSet] = Registry(
    "metric set",
    {
        "ours": MetricSet(
            "ours",
            "EM, SM (both directions), token F1; math EM with numeric equivalence; SSim; an empty prediction "
            "scores 0 on every metric",
            {"em": exact_match, "sm": either_way_substring_match, "f1": token_f1, "math_em": math_exact_match,
             "ssim": "promptr1.rewards.similarity:ssim"},
            empty_scores_zero=True,
        ),
        "reference": MetricSet(
            "reference",
            "the official eval_scores.py: EM, SM (both directions), F1 (1.0 when both sides normalise to "
            "nothing); math EM on normalised text only; SSim 1.0 when either side is empty",
            {"em": reference_exact_match, "sm": reference_substring_match, "f1": reference_token_f1,
             "math_em": reference_math_exact_match, "ssim": "promptr1.rewards.similarity:reference_ssim"},
            empty_scores_zero=False,
        ),
    },
)
