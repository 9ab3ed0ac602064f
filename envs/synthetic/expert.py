"""``sim``: a deterministic simulated expert for the bundled synthetic tasks.

A STAND-IN FOR DEMOS AND TESTS, NOT A LANGUAGE MODEL. It plays the large LLM against
:mod:`promptr1.envs.synthetic` so that prompting skill matters and can be learned on a laptop.
**In one call it does one thing: it looks up one fact, or it performs one arithmetic operation.**
Everything a task needs beyond that (splitting a nested question into hops, turning a story into
operations, carrying a result into the next request, knowing when to stop) is the agent's job.

How it reads a chat: only the last user message, plus the previous reply (its own last message)
to resolve a reference. Everything else in the history is ignored.

1. Longer than ``max_prompt_chars`` (4,000): "a lot of text" (vague).
2. The *focus* is the last sentence ending with ``?`` that names a relation, an entity or a number,
   or the whole prompt when there is none. If the focus names a relation of the world (keywords in
   ``RELATIONS``: born/birthplace, country/located, capital, mayor, founded/founder,
   employer/work for/work at, headquartered; "that country", "this city" are references, not keywords):

   * exactly one relation and exactly one entity of the right type: the fact, e.g.
     ``Vantrel Corp was founded by Mira Osk.`` An entity is named by its full name or any one of
     its name words (``Mira``, ``Osk``, ``Vantrel``), in any case;
   * one relation, no such entity but a reference (he, she, it, that city, ...): the entity is the
     last one of the right type in the earlier part of the prompt, else in the previous reply;
   * two or more relations (a multi-hop question pasted whole) or two subjects: a vague reply or
     a plausible wrong entity (chosen from a hash of the prompt; ``vague_style``). A wrong entity is
     never one that the mentioned relations reach from the mentioned entities (in as many hops as
     relation words in the question), so a question that bundles several facts is never answered
     right, whatever the style.
3. Else an arithmetic expression (in the focus, or anywhere when the focus has none), read by our
   own exact parser (digits and ``+ - * / ( )``, also ``x``/``×``/``÷`` and the words plus, minus,
   times, multiplied by, divided by):

   * exactly one expression with exactly one operation: ``12 * 4 = 48.``;
   * one expression with two or more operations (``36 + 5 - 2``, ``(38 + 11) / 7``): refused,
     "one operation at a time", with no number (it is not computed in part);
   * several expressions: "one calculation at a time"; malformed: says so.
4. Else a prompt with two or more numbers but no expression (a word problem, pasted whole or
   paraphrased): it does not read stories, whatever their length; it asks for the calculation
   written out, and its reply holds no number.
5. Else an entity alone: "What would you like to know about X?"; anything else: a generic vague reply.

Replies are short (under 200 characters) and the same messages always give the same reply.
``docs/synthetic.md`` states the same rules with examples; ``tests/test_sim_backend.py`` pins them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from promptr1.llm_backends.base import BaseBackend, Completion, Message, validate_messages

from .world import RELATIONS, make_world, stable_hash

__all__ = ["SimExpert", "StrongSimExpert", "count_operations", "evaluate_expression", "find_expressions", "format_number"]

# --------------------------------------------------------------------------- arithmetic
_MAX_EXPR_CHARS = 200
_MAX_DIGITS = 12
_LIMIT = Fraction(10) ** 15
_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|[-+*/()]|\s+|.", re.DOTALL)
_WORD_OPS = ((r"multiplied\s+by|times", "*"), (r"divided\s+by", "/"), (r"plus", "+"), (r"minus", "-"))


def _normalise_ops(text: str) -> str:
    """Unicode and spelled-out operators as ASCII: ``3 times 4`` -> ``3 * 4``."""
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-").replace("–", "-")
    text = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])", " * ", text)
    for words, op in _WORD_OPS:
        text = re.sub(rf"(?<=[\d)])\s*\b(?:{words})\b\s*(?=[\d(])", f" {op} ", text, flags=re.IGNORECASE)
    return text


class _ValueProblem(ValueError):
    """A well-formed expression whose value cannot be given (division by zero, too large)."""


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKEN_RE.findall(text) if not t.isspace()]


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)* ; unary := ('-'|'+') unary | atom."""

    def __init__(self, tokens: list[str]) -> None:
        self.toks, self.i, self.binary_ops, self.depth = tokens, 0, 0, 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ValueError("the expression ends too early")
        self.i += 1
        return tok

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op, right = self.take(), self.term()
            self.binary_ops += 1
            value = value + right if op == "+" else value - right
            _check(value)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.unary()
            self.binary_ops += 1
            if op == "/" and right == 0:
                raise _ValueProblem("division by zero")
            value = value * right if op == "*" else value / right
            _check(value)
        return value

    def unary(self) -> Fraction:
        tok = self.peek()
        if tok in ("-", "+"):
            self.take()
            self.depth += 1
            if self.depth > 20:
                raise ValueError("too deeply nested")
            value = self.unary()
            self.depth -= 1
            return -value if tok == "-" else value
        return self.atom()

    def atom(self) -> Fraction:
        tok = self.take()
        if tok == "(":
            self.depth += 1
            if self.depth > 20:
                raise ValueError("too deeply nested")
            value = self.expr()
            if self.take() != ")":
                raise ValueError("a '(' is not closed")
            self.depth -= 1
            return value
        if tok[0].isdigit():
            if len(tok.replace(".", "")) > _MAX_DIGITS:
                raise ValueError(f"a number has more than {_MAX_DIGITS} digits")
            return Fraction(tok)
        raise ValueError(f"unexpected {tok!r}")


def _check(value: Fraction) -> None:
    if abs(value) >= _LIMIT:
        raise _ValueProblem("the result is too large")


def evaluate_expression(text: str) -> Fraction:
    """Evaluate one arithmetic expression exactly (no ``eval``); raise ``ValueError`` if malformed.

    >>> evaluate_expression("12 * 4"), evaluate_expression("(3+5)*2"), evaluate_expression("7 / 2")
    (Fraction(48, 1), Fraction(16, 1), Fraction(7, 2))
    >>> evaluate_expression("3 times 4 minus 2")
    Fraction(10, 1)
    >>> evaluate_expression("12 * * 4")
    Traceback (most recent call last):
    ...
    ValueError: malformed expression '12 * * 4': unexpected '*'
    """
    if not isinstance(text, str):
        raise TypeError(f"expected the expression as a str, got {type(text).__name__}.")
    if len(text) > _MAX_EXPR_CHARS:
        raise ValueError(f"expression longer than {_MAX_EXPR_CHARS} characters")
    toks = _tokens(_normalise_ops(text))
    parser = _Parser(toks)
    try:
        if not toks:
            raise ValueError("it is empty")
        value = parser.expr()
        if parser.peek() is not None:
            raise ValueError(f"unexpected {parser.peek()!r}")
    except _ValueProblem as exc:
        raise ValueError(f"cannot evaluate {text!r}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"malformed expression {text!r}: {exc}") from None
    return value


def count_operations(text: str) -> int:
    """How many binary operations a well-formed expression holds (a sign is not one).

    >>> count_operations("12 * 4"), count_operations("-3 + 5"), count_operations("(38 + 11) / 7")
    (1, 1, 2)
    >>> count_operations("36 plus 5 minus 2 plus 5")
    3
    """
    toks = _tokens(_normalise_ops(text))
    return sum(1 for prev, tok in zip(toks, toks[1:]) if tok in "+-*/" and (prev[0].isdigit() or prev == ")"))


def _canonical(text: str) -> str:
    out = ""
    for tok in _tokens(_normalise_ops(text)):
        if tok in "+-*/" and out and out[-1] not in "(+-*/ ":
            out += f" {tok} "
        else:
            out += tok
    return re.sub(r"\s+", " ", out).strip()


def find_expressions(text: str) -> tuple[list[str], list[str]]:
    """The arithmetic expressions written in ``text``: ``(well_formed, malformed)``.

    A candidate is a run of numbers, operators and brackets holding an operator; a lone number
    (``-3``, ``(12)``) is not an expression.

    >>> find_expressions("What is 12 * 4? And (3 + 5?")
    (['12 * 4'], ['(3 + 5'])
    >>> find_expressions("Ana has 12 boxes, a 2-step task.")
    ([], [])
    """
    runs: list[str] = []
    current = ""
    for tok in _TOKEN_RE.findall(_normalise_ops(text)):
        if tok.isspace() or tok[0].isdigit() or tok in "+-*/()":
            current += tok
        else:
            runs.append(current)
            current = ""
    runs.append(current)
    good: list[str] = []
    bad: list[str] = []
    for run in runs:
        run = run.strip().rstrip("+-").strip()
        run = run.lstrip(")").strip()
        if not any(c.isdigit() for c in run) or not any(c in "+-*/" for c in run.lstrip("+-")):
            continue
        if len(run) > _MAX_EXPR_CHARS:  # not parsed: evaluate_expression() will say it is too long
            good.append(run)
            continue
        parser = _Parser(_tokens(run))
        try:
            parser.expr()
            ok = parser.peek() is None
        except _ValueProblem:
            ok, parser.binary_ops = True, 1
        except ValueError:
            ok = False
        if ok and parser.binary_ops:
            good.append(_canonical(run))
        elif not ok:
            bad.append(run)
    return good, bad


def format_number(value: Fraction) -> str:
    """``48``, ``3.5``, ``0.333333``.

    >>> format_number(Fraction(7, 2)), format_number(Fraction(-48)), format_number(Fraction(1, 3))
    ('3.5', '-48', '0.333333')
    """
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# --------------------------------------------------------------------------- the expert
_CONTROL = dict.fromkeys((c for c in range(0x3000) if unicodedata.category(chr(c)).startswith("C")
                          and chr(c) not in "\n\t"), " ")
_PRONOUN_RE = re.compile(r"\b(?:he|she|him|his|her|they|them|their|it|its|this|that|there|these|those)\b|"
                         r"\bthe (?:person|company|firm|city|town|country)\b", re.IGNORECASE)
# "that country", "this city": a reference to an earlier entity, not a question about a relation.
_REFERENCE_RE = re.compile(r"\b(?:that|this|said)\s+(?:person|company|firm|city|town|country)\b", re.IGNORECASE)
_WORD_RE = re.compile(r"[^\W\d_]+")
_SENTENCE_END_RE = re.compile(r"([?.!\n])")
_VAGUE_MULTI = ("That depends on several facts, and I am not sure how they connect.",
                "I am not certain. That question combines more than one fact.",
                "Hard to say; I would need to work out each fact in turn.")
_WRONG_ENTITY = ("It might be {x}, but I am not sure.", "I believe it is {x}.", "Probably {x}.")
_ONE_OPERATION = ("Please ask me one operation at a time, for example a sum of two numbers.",
                  "I do one operation per request. Which two numbers, and which operation?")
_WORD_PROBLEM = ("I only calculate what you write out: two numbers and one operation, please.",
                 "I do not read stories. Which calculation should I do? Write it out, one operation.")
_GENERIC = ("I am not sure what you are asking. Could you ask one specific question?",
            "Could you be more specific?",
            "I do not know. Please ask one clear question.")


class SimExpert(BaseBackend):
    """The simulated expert (``env_llm="sim"``): a stand-in for demos and tests, not a language model.

    Args:
        world_seed: the knowledge base it knows (:func:`promptr1.envs.synthetic.make_world`); use the
            same ``world_seed`` as the tasks.
        world: a ready :class:`~promptr1.envs.synthetic.World` instead of a seed.
        vague_style: for a question that bundles several facts or steps: ``"mixed"`` (a hash of the
            prompt picks a vague reply or a plausible wrong answer), ``"vague"`` (never names an
            answer) or ``"wrong"`` (always a confident wrong answer).
        max_prompt_chars: longer prompts get a "too much text" reply without being read.

    Sampling keywords (temperature, max_tokens, ...) are accepted and ignored.

    >>> sim = SimExpert()
    >>> sim.complete([{"role": "user", "content": "What is 12 * 4?"}]).text
    '12 * 4 = 48.'
    """

    name = "sim"
    deterministic = True

    def __init__(self, world_seed: int = 0, world: Any = None, vague_style: str = "mixed",
                 max_prompt_chars: int = 4000) -> None:
        super().__init__()

        if vague_style not in ("mixed", "vague", "wrong"):
            raise ValueError(f"vague_style must be 'mixed', 'vague' or 'wrong', got {vague_style!r}.")
        self.world = world if world is not None else make_world(int(world_seed))
        self.vague_style = vague_style
        self.max_prompt_chars = int(max_prompt_chars)
        self._relations = RELATIONS
        self._rel_res = {n: re.compile(r.keywords, re.IGNORECASE) for n, r in RELATIONS.items()}
        # Every name token (first name, surname, company stem) is unique in a world: one token names one entity.
        self._token_to_entity = {tok.lower(): e for e in self.world.entities for tok in e.tokens}

    def __reduce__(self):  # picklable (vector-env workers): rebuild from the arguments, not the thread lock
        return (type(self), (self.world.seed, self.world, self.vague_style, self.max_prompt_chars))

    def __repr__(self) -> str:
        return f"SimExpert(world_seed={self.world.seed}, vague_style={self.vague_style!r})"

    def cache_identity(self) -> dict[str, Any]:
        """What shapes its replies besides the messages, for a response cache's key: the knowledge base (its seed
        and a digest of its entities and facts, so a world built with other sizes differs too), ``vague_style``
        and ``max_prompt_chars``."""
        digest = getattr(self, "_world_digest", None)
        if digest is None:
            parts = [f"{e.name}|{e.type}" for e in self.world.entities]
            parts += [f"{f.subject}|{f.relation}|{f.object}" for f in self.world.facts]
            digest = self._world_digest = f"{stable_hash(*parts):016x}"
        return {"world_seed": self.world.seed, "world": digest, "vague_style": self.vague_style,
                "max_prompt_chars": self.max_prompt_chars}

    # ------------------------------------------------------------------ helpers
    def _entities(self, text: str) -> list[tuple[int, Any]]:
        """``(position, entity)`` for every mention, in order."""
        found = []
        for m in _WORD_RE.finditer(text):
            entity = self._token_to_entity.get(m.group(0).lower())
            if entity is not None:
                found.append((m.start(), entity))
        return found

    def _meaningful(self, sentence: str) -> bool:
        """Does a sentence name a relation, an entity or a number (so it can be the question asked)?"""
        return (any(ch.isdigit() for ch in sentence) or any(rx.search(sentence) for rx in self._rel_res.values())
                or bool(self._entities(sentence)))

    def _pick(self, options: Sequence[str], key: int) -> str:
        return options[key % len(options)]

    def _reachable(self, starts: set[str], relations: list[str], hops: int) -> set[str]:
        """Every entity the ``relations`` reach from ``starts`` in at most ``hops`` hops, in any order."""
        seen, frontier = set(starts), set(starts)
        for _ in range(hops):
            nxt = set()
            for name in frontier:
                etype = self.world.entity(name).type
                for r in relations:
                    if self._relations[r].subject_type == etype:
                        nxt.add(self.world.lookup(name, r))
            frontier = nxt - seen
            seen |= nxt
        return seen

    def _several_facts(self, relations: list[str], mentioned: set[str], key: int, hops: int) -> tuple[str, str]:
        if self.vague_style == "vague" or (self.vague_style == "mixed" and key % 2 == 0):
            return self._pick(_VAGUE_MULTI, key >> 3), "vague_multi"
        rel = self._relations[relations[(key >> 5) % len(relations)]]
        # A guess, never the answer: nothing the question's relations reach from its entities.
        avoid = self._reachable(mentioned, relations, hops)
        pool = sorted(e.name for e in self.world.of_type(rel.object_type) if e.name not in avoid)
        if not pool:
            return self._pick(_VAGUE_MULTI, key >> 3), "vague_multi"
        return self._pick(_WRONG_ENTITY, key >> 9).format(x=self._pick(pool, key >> 13)), "wrong_multi"

    def _fact(self, focus: str, before: str, history_reply: str, key: int) -> tuple[str, str] | None:
        asked = _REFERENCE_RE.sub(" ", focus)
        relations = [n for n, rx in self._rel_res.items() if rx.search(asked)]
        if not relations:
            return None
        mentioned = self._entities(focus)
        names = {e.name for _, e in mentioned}
        hops = sum(len(rx.findall(asked)) for rx in self._rel_res.values())  # a relation may be asked twice
        if len(relations) >= 2:
            return self._several_facts(relations, names, key, hops)
        rel = self._relations[relations[0]]
        subjects = sorted({e.name for _, e in mentioned if e.type == rel.subject_type})
        if len(subjects) > 1:
            return self._several_facts(relations, names, key, hops)
        if not subjects and _PRONOUN_RE.search(focus):
            for context in (before, history_reply):
                earlier = [e.name for _, e in self._entities(context) if e.type == rel.subject_type]
                if earlier:
                    subjects = [earlier[-1]]
                    break
        if not subjects:
            if names:
                return f"I don't know that about {min(names)}.", "type_mismatch"
            return "Who or what do you mean? Please name it.", "no_entity"
        s = subjects[0]
        text = rel.fact.format(s=s, o=self.world.lookup(s, rel.name))
        return text[0].upper() + text[1:], "fact"

    def _arith(self, focus: str, prompt: str) -> tuple[str, str] | None:
        good, bad = find_expressions(focus)
        if not good and not bad:
            good, bad = find_expressions(prompt)
        if len(good) > 1:
            return "Please ask me one calculation at a time.", "several_expressions"
        if len(good) == 1:
            if len(good[0]) <= _MAX_EXPR_CHARS and count_operations(good[0]) > 1:
                return self._pick(_ONE_OPERATION, stable_hash(good[0])), "several_operations"
            try:
                value = evaluate_expression(good[0])
            except ValueError as exc:
                reason = str(exc).split(": ")[-1]
                return f"I cannot compute that: {reason}."[:199], "bad_expression"
            return f"{good[0]} = {format_number(value)}."[:199], "arith"
        if bad:
            return "That expression looks malformed. Could you write it again?", "bad_expression"
        return None

    def _word_problem(self, prompt: str, key: int) -> tuple[str, str] | None:
        numbers = re.findall(r"\d+(?:\.\d+)?", prompt)
        if len(numbers) < 2:
            return None
        return self._pick(_WORD_PROBLEM, key >> 3), "word_problem"

    # ------------------------------------------------------------------ the reply
    def reply(self, messages: Sequence[Message]) -> tuple[str, str]:
        """``(reply_text, intent)`` for a chat; ``intent`` names the rule that fired."""
        msgs = validate_messages(messages)
        prompt = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
        last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=len(msgs))
        history_reply = next((m["content"] for m in reversed(msgs[:last_user]) if m["role"] == "assistant"), "")
        prompt = prompt.strip()
        if len(prompt) > self.max_prompt_chars:
            return "That is a lot of text. Could you ask one specific question?", "too_long"
        prompt = prompt.translate(_CONTROL)
        history_reply = history_reply[-self.max_prompt_chars:].translate(_CONTROL)
        key = stable_hash(self.world.seed, prompt)
        pieces = _SENTENCE_END_RE.split(prompt)  # text, end mark, text, end mark, ...
        questions = [pieces[i - 1] + "?" for i in range(1, len(pieces), 2) if pieces[i] == "?" and pieces[i - 1].strip()]
        focus = next((q.strip() for q in reversed(questions) if self._meaningful(q)), prompt)
        before = prompt[: prompt.rfind(focus)] if focus != prompt else ""
        for rule in (lambda: self._fact(focus, before, history_reply, key), lambda: self._arith(focus, prompt),
                     lambda: self._word_problem(prompt, key)):
            out = rule()
            if out is not None:
                return out
        mentioned = self._entities(focus)
        if mentioned:
            return f"What would you like to know about {mentioned[0][1].name}?", "entity_only"
        return self._pick(_GENERIC, key), "generic"

    def complete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        msgs = validate_messages(messages)
        text, intent = self.reply(msgs)
        return Completion(text=text, latency_s=0.0, prompt_tokens=sum(len(m["content"].split()) for m in msgs),
                          completion_tokens=len(text.split()), model="sim", extra={"intent": intent})


class StrongSimExpert(SimExpert):
    """``sim-strong``: the simulated expert's expensive sibling, for envs with several env LLMs (docs/cost-aware.md).

    A STAND-IN, NOT A LANGUAGE MODEL. Everything :class:`SimExpert` answers it answers the same way, and **in one
    call it also answers a composite question**:

    * a nested fact question with one entity ("Who is the mayor of the capital of the country where Miktha is
      located?"): the relations it names are applied from the entity outwards, in the first order (innermost, i.e.
      last named, first) whose entity types chain, and the reply names the final entity;
    * an expression with several operations (``(38 + 11) / 7``): computed whole;
    * a word problem: read sentence by sentence (:func:`promptr1.envs.decompose.parse_word_problem`) and computed.

    >>> strong = StrongSimExpert()
    >>> strong.complete([{"role": "user", "content": "What is (38 + 11) / 7?"}]).text
    '(38 + 11) / 7 = 7.'
    >>> SimExpert().complete([{"role": "user", "content": "What is (38 + 11) / 7?"}]).text != '(38 + 11) / 7 = 7.'
    True
    """

    name = "sim-strong"

    def _chain(self, focus: str) -> str | None:
        asked = _REFERENCE_RE.sub(" ", focus)
        found = sorted((m.start(), name) for name, rx in self._rel_res.items() for m in rx.finditer(asked))
        subjects = {e.name for _, e in self._entities(focus)}
        if len(found) < 2 or len(subjects) != 1:
            return None
        import itertools

        start = next(iter(subjects))
        names = [name for _, name in reversed(found)]  # innermost (named last) first, as nested phrases read
        for order in itertools.permutations(names):  # the first order whose types chain from the entity
            here = start
            for name in order:
                if self.world.entity(here).type != self._relations[name].subject_type:
                    break
                here = self.world.lookup(here, name)
            else:
                return f"The answer is {here}."
        return None

    def _several_facts(self, relations: list[str], mentioned: set[str], key: int, hops: int) -> tuple[str, str]:
        chained = self._chain(self._focus)
        if chained is not None:
            return chained, "composite_fact"
        return super()._several_facts(relations, mentioned, key, hops)

    def _arith(self, focus: str, prompt: str) -> tuple[str, str] | None:
        good, _ = find_expressions(focus)
        if not good:
            good, _ = find_expressions(prompt)
        if len(good) == 1 and len(good[0]) <= _MAX_EXPR_CHARS and count_operations(good[0]) > 1:
            try:
                return f"{good[0]} = {format_number(evaluate_expression(good[0]))}."[:199], "composite_arith"
            except ValueError:
                pass
        return super()._arith(focus, prompt)

    def _word_problem(self, prompt: str, key: int) -> tuple[str, str] | None:
        from promptr1.envs.decompose import parse_word_problem

        parsed = parse_word_problem(prompt)
        if parsed is not None and parsed[1]:
            start, steps = parsed
            expr = start
            for op, number in steps:
                expr = f"({expr} {op} {number})"
            try:
                return f"The answer is {format_number(evaluate_expression(expr))}.", "composite_word_problem"
            except ValueError:
                pass
        return super()._word_problem(prompt, key)

    def reply(self, messages: Sequence[Message]) -> tuple[str, str]:
        msgs = validate_messages(messages)
        prompt = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "").strip()
        pieces = _SENTENCE_END_RE.split(prompt)
        questions = [pieces[i - 1] + "?" for i in range(1, len(pieces), 2) if pieces[i] == "?" and pieces[i - 1].strip()]
        self._focus = next((q.strip() for q in reversed(questions) if self._meaningful(q)), prompt)
        return super().reply(msgs)
