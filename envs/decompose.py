"""Question-decomposition heuristics for the strategy wrapper's ``decompose`` strategy and answer extraction.

Written for the question shapes of the bundled synthetic tasks (multi-hop questions with a nested
relative phrase; word problems with one operation per sentence); see :mod:`promptr1.envs.strategy_wrapper`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Decomposition", "extract_answer", "find_entity", "innermost_phrase", "parse_word_problem"]


# Capitalised words that start sentences in replies and questions without naming anything.
_FUNCTION_WORDS = frozenset(
    "a an and are as at be but by can could did do does for from hard he her his how i if in is it its "
    "let maybe may might my no not of on or our perhaps please possibly probably roughly she so sure that "
    "the their then there these they this those to was we what when where which who whom whose why will "
    "would yes you your".split()
)
_CAP_RUN_RE = re.compile(r"\b[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_RELATIVE_RE = re.compile(r"\b(?:where|who|whom|which|that|whose)\b", re.IGNORECASE)


def _name_runs(text: str) -> list[tuple[int, int]]:
    """Spans of capitalised word runs that name something (a leading function word is dropped).

    >>> t = "In which country was the founder of Vantrel Corp born?"
    >>> [t[a:b] for a, b in _name_runs(t)]
    ['Vantrel Corp']
    >>> r = "The mayor of Sansu is Kiro Tan."
    >>> [r[a:b] for a, b in _name_runs(r)]
    ['Sansu', 'Kiro Tan']
    """
    out = []
    for m in _CAP_RUN_RE.finditer(text):
        start, words = m.start(), m.group(0).split()
        while words and words[0].lower() in _FUNCTION_WORDS:
            start = text.index(words[1], start + len(words[0])) if len(words) > 1 else m.end()
            words = words[1:]
        if words:
            out.append((start, m.end()))
    return out


def find_entity(question: str) -> str | None:
    """The last name in ``question`` (a run of capitalised words that is not a function word).

    >>> find_entity("Who is the mayor of the capital of the country of Lastel?")
    'Lastel'
    >>> find_entity("What is the capital?") is None
    True
    """
    runs = _name_runs(question)
    return question[runs[-1][0]:runs[-1][1]] if runs else None


def innermost_phrase(question: str) -> str | None:
    """The innermost ``the ...`` noun phrase around the question's entity, or ``None``.

    >>> innermost_phrase("In which country was the founder of Vantrel Corp born?")
    'the founder of Vantrel Corp'
    >>> innermost_phrase("In which country is the city where Mira Osk was born?")
    'the city where Mira Osk was born'
    >>> innermost_phrase("What is the birthplace of the founder of the company Lekfe Pulruk works for?")
    'the company Lekfe Pulruk works for'
    >>> innermost_phrase("Which company does the person who founded Bronkri Holdings work for?")
    'the person who founded Bronkri Holdings'
    >>> innermost_phrase("In which country is Vorla?") is None
    True
    """
    entity = find_entity(question)
    if entity is None:
        return None
    e_start = question.rfind(entity)
    e_end = e_start + len(entity)
    m = None
    for m in re.finditer(r"\bthe\b", question[:e_start], flags=re.IGNORECASE):
        pass
    if m is None:
        return None
    head = question[m.start():e_start].split()
    # X is an object ("the founder of X", "the person who founded X"): the phrase ends at X. X is the subject
    # of a relative clause ("the city where X was born", "the company X works for"): the clause runs on.
    x_is_object = head[-1].lower() == "of" or (
        any(_RELATIVE_RE.fullmatch(w) for w in head) and not _RELATIVE_RE.fullmatch(head[-1]))
    if x_is_object:
        end = e_end
    else:
        end = len(question.rstrip().rstrip("?.!").rstrip())
        end = max(end, e_end)
    return question[m.start():end].strip()


def extract_answer(reply: str, prompt: str = "") -> str:
    """The answer a reply gives: the last name it mentions that ``prompt`` did not, else its last number.

    >>> extract_answer("Vantrel Corp was founded by Mira Osk.", "Who founded Vantrel Corp?")
    'Mira Osk'
    >>> extract_answer("10 * 6 = 60.", "What is 10 * 6?")
    '60'
    >>> extract_answer("I am not sure. Could you be more specific?", "What is it?")
    ''
    """
    known = {prompt[a:b].lower() for a, b in _name_runs(prompt)}
    names = [reply[a:b] for a, b in _name_runs(reply) if reply[a:b].lower() not in known]
    if names:
        return names[-1]
    numbers = _NUMBER_RE.findall(reply)
    return numbers[-1] if numbers else ""


_PLUS = re.compile(r"\b(?:more|gets?|got|finds?|found|buys?|bought|receives?|received|adds?|earns?|gains?)\b", re.I)
_MINUS = re.compile(r"\b(?:gives? away|gave away|loses?|lost|eats?|ate|spends?|spent|sells?|sold|uses?)\b", re.I)
_DIVIDE = re.compile(r"\b(?:equally|shares?|split|splits|divides?)\b", re.I)
_TIMES = re.compile(r"\b(?:each|every|per)\b", re.I)


def parse_word_problem(question: str) -> tuple[str, list[tuple[str, str]]] | None:
    """``(start, [(op, number), ...])`` for a word problem, read sentence by sentence; ``None`` if none.

    >>> parse_word_problem("Pia has 10 jars with 6 shells in each jar. Then Pia loses 4 shells. How many?")
    ('10', [('*', '6'), ('-', '4')])
    >>> parse_word_problem("Ana has 38 apples. Ana shares them equally among 7 friends. How many?")
    ('38', [('/', '7')])
    >>> parse_word_problem("Who founded Vantrel Corp?") is None
    True
    """
    sentences = [s for s in re.split(r"(?<=[.?!])\s+", question.strip()) if s]
    start: str | None = None
    steps: list[tuple[str, str]] = []
    for sentence in sentences:
        nums = _NUMBER_RE.findall(sentence)
        if not nums:
            continue
        if start is None:
            start = nums[0]
            if len(nums) >= 2 and _TIMES.search(sentence):
                steps.append(("*", nums[1]))
            continue
        if _DIVIDE.search(sentence):
            op = "/"
        elif _MINUS.search(sentence):
            op = "-"
        elif _TIMES.search(sentence):
            op = "*"
        elif _PLUS.search(sentence):
            op = "+"
        else:
            continue
        steps.append((op, nums[-1]))
    if start is None:
        return None
    return start, steps


_DONE_WORDS = frozenset("what who which where is was are the a an of in does did do".split())


@dataclass
class Decomposition:
    """A plan of one-fact (or one-operation) sub-questions built from the question text only.

    ``next_subquestion`` is ``None`` once the plan is finished; :meth:`advance` consumes a reply.

    >>> d = Decomposition("In which country was the founder of Vantrel Corp born?")
    >>> d.next_subquestion
    'What is the founder of Vantrel Corp?'
    >>> d.advance("Vantrel Corp was founded by Mira Osk."); d.next_subquestion
    'In which country was Mira Osk born?'
    >>> d.advance("Mira Osk was born in Vorla, in Dremland."); d.next_subquestion is None, d.answer
    (True, 'Dremland')
    >>> a = Decomposition("Ben has 3 boxes with 4 cards in each box. Then Ben gets 2 more cards. How many?")
    >>> a.next_subquestion
    'What is 3 * 4?'
    >>> a.advance("3 * 4 = 12."); a.next_subquestion
    'What is 12 + 2?'
    >>> a.advance("12 + 2 = 14."); a.next_subquestion is None, a.answer
    (True, '14')
    """

    question: str
    kind: str = field(init=False)
    residual: str = field(init=False)
    answer: str = field(init=False, default="")
    _value: str = field(init=False, default="")
    _steps: list[tuple[str, str]] = field(init=False, default_factory=list)
    _phrase: str | None = field(init=False, default=None)
    _done: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.residual = self.question.strip()
        parsed = parse_word_problem(self.question) if any(ch.isdigit() for ch in self.question) else None
        if parsed is not None:
            self.kind = "arith"
            self._value, self._steps = parsed
            self._done = not self._steps
            self.answer = self._value if self._done else ""
        else:
            self.kind = "entity"
            self._done = find_entity(self.question) is None
        self._plan_next()

    def _plan_next(self) -> None:
        self._phrase = None
        if self._done:
            self.next_subquestion: str | None = None
            return
        if self.kind == "arith":
            op, b = self._steps[0]
            self.next_subquestion = f"What is {self._value} {op} {b}?"
            return
        phrase = innermost_phrase(self.residual)
        if phrase is not None:
            self._phrase = phrase
            self.next_subquestion = f"What is {phrase}?"
        else:
            self.next_subquestion = self.residual if self.residual.endswith("?") else self.residual + "?"

    @property
    def done(self) -> bool:
        return self._done

    def advance(self, reply: str) -> None:
        """Consume the reply to :attr:`next_subquestion`; a reply with no usable answer changes nothing."""
        if self._done or self.next_subquestion is None:
            return
        found = extract_answer(reply, self.next_subquestion)
        if not found:
            return
        if self.kind == "arith":
            if not _NUMBER_RE.fullmatch(found):
                return
            self._value = found
            self._steps.pop(0)
            self._done = not self._steps
        elif self._phrase is not None:
            self.residual = self.residual.replace(self._phrase, found, 1)
            rest = re.findall(r"[^\W\d_]+", self.residual.replace(found, " ").lower())
            self._done = all(w in _DONE_WORDS for w in rest)  # "What is Krosa?": nothing left to ask
        else:
            self._done = True
        if self._done:
            self.answer = found
        self._plan_next()
