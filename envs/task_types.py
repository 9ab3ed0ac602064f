"""Task types (``qa``, ``math``, ``text``): which metrics score a task, decided from evidence, never silently.

The official files label every row ``multihop_qa``, so the type comes from what the data shows:

1. the user's choice (``task_type=`` / ``--task-type NAME=TYPE``), which always wins;
2. a row's own ``ability`` field when it says ``math`` or ``text``;
3. the set's name (its ``data_source`` or file name) when it carries a known word (gsm8k, math, xsum, book, ...);
4. else the set's content: mostly numeric gold answers -> ``math``; mostly long multi-sentence gold texts ->
   ``text``; else ``qa``;
5. row exceptions in a set of another type: a long multi-sentence gold is ``text``; a numeric gold is
   ``math`` when its question is written in mathematical notation or wording (``$``, ``\\frac``, "solve",
   "find the", ...) or holds two or more numbers other than years (a word problem; a year is a QA answer). Mixed sets such as the paper's
   validation file (labelled hotpot, holding GSM8K and WritingPrompts rows too) are typed row by row this way.

Every task records its evidence (``Task.type_evidence``), and :func:`type_summary` says, per set, how many
rows got each type and why; the evaluation report prints it.

>>> infer_set_type("gsm8k-256-test", [("30",), ("18",)])
('math', "name 'gsm8k-256-test' says math")
>>> infer_set_type("my-set", [("Paris",), ("Ada Lovelace",)])
('qa', 'content: short non-numeric gold answers')
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["TASK_TYPES", "infer_set_type", "is_long_text", "is_numeric", "row_type", "type_summary"]

TASK_TYPES: tuple[str, ...] = ("qa", "math", "text")

_NAME_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("math", ("gsm8k", "math", "arith", "aime", "amc", "mathqa", "svamp", "asdiv")),
    ("text", ("book", "wp-", "writingprompt", "writing_prompt", "xsum", "summar", "cnn", "story", "stories")),
    ("qa", ("hotpot", "2wiki", "musique", "popqa", "squad", "trivia", "natural_questions", "nq-", "webq",
            "bamboogle", "multihop", "strategyqa")),
)
_NUMBER = re.compile(r"^\s*[-+]?\$?\s*\d[\d,]*(?:\.\d+)?\s*%?\s*$|^\s*[-+]?\d+\s*/\s*\d+\s*$")
_QUESTION_NUMBERS = re.compile(
    r"\d+(?:[.,]\d+)?|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty"
    r"|fifty|hundred|thousand|half|twice|double|triple|dozen|quarter|third)\b",
    re.IGNORECASE,
)
_YEAR = re.compile(r"^\s*(1[0-9]|20)\d\d\s*$")  # a year is a QA answer, not arithmetic
_MATH_MARKS = re.compile(
    r"\$|\\\(|\\frac|\\sum|\\sqrt|\^|\b(?:solve|compute|calculate|evaluate|simplify|integer|remainder)\b"
    r"|\bfind (?:the|all|a|an|\$)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
#: Share of rows a content rule needs to type a whole set.
_MAJORITY = 0.8


def is_numeric(answer: str) -> bool:
    """A gold answer that is a plain number (``30``, ``-2.5``, ``$1,200``, ``3/4``, ``40%``).

    >>> is_numeric("1,200"), is_numeric("3/4"), is_numeric("three"), is_numeric("1976 film")
    (True, True, False, False)
    """
    return bool(_NUMBER.match(answer))


def is_long_text(answer: str) -> bool:
    """A gold answer that is a passage: 40 words or more, or three sentences or more.

    >>> is_long_text("Paris"), is_long_text("It rained. We stayed in. The end.")
    (False, True)
    """
    return len(answer.split()) >= 40 or len(_SENTENCE_END.findall(answer.strip())) >= 3


def _name_type(name: str) -> str | None:
    low = name.lower()
    for kind, words in _NAME_WORDS:
        if any(w in low for w in words):
            return kind
    return None


def infer_set_type(name: str, golds: Sequence[Sequence[str]]) -> tuple[str, str]:
    """The type of a set from its name, else its content; returns ``(type, evidence)``."""
    by_name = _name_type(name)
    if by_name is not None:
        return by_name, f"name {name!r} says {by_name}"
    n = max(len(golds), 1)
    numeric = sum(1 for g in golds if g and all(is_numeric(a) for a in g)) / n
    long = sum(1 for g in golds if g and is_long_text(g[0])) / n
    if numeric >= _MAJORITY:
        return "math", f"content: {numeric:.0%} of gold answers are numbers"
    if long >= _MAJORITY:
        return "text", f"content: {long:.0%} of gold answers are passages"
    return "qa", "content: short non-numeric gold answers"


def row_type(set_type: str, question: str, golds: Sequence[str], ability: str = "") -> tuple[str, str]:
    """A row's type within a set of type ``set_type``; returns ``(type, evidence)``."""
    ab = (ability or "").strip().lower()
    if ab in ("math", "text"):
        return ab, f"row ability {ab!r}"
    if set_type != "text" and golds and is_long_text(golds[0]):
        return "text", "row: the gold answer is a passage"
    if set_type == "qa" and golds and all(is_numeric(a) for a in golds):
        if _MATH_MARKS.search(question):
            return "math", "row: numeric gold for a question in mathematical notation or wording"
        year = any(_YEAR.match(a) for a in golds)
        if not year and sum(1 for n in _QUESTION_NUMBERS.findall(question) if not _YEAR.match(n)) >= 2:
            return "math", "row: numeric gold for a question with numbers (a word problem)"
    return set_type, ""


def type_summary(tasks: Sequence[object]) -> str:
    """How many rows got each type and from what evidence, e.g. ``qa 126 (name 'hotpot' says qa), math 2 (...)``."""
    counts: Counter[tuple[str, str]] = Counter()
    for t in tasks:
        counts[(getattr(t, "ability", "qa"), getattr(t, "type_evidence", "") or "given")] += 1
    return "; ".join(f"{kind} {n} ({why})" for (kind, why), n in counts.most_common())
