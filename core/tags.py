"""The tags of the Prompt-R1 turn protocol (docs/architecture.md, the turn protocol), defined once for every layer.

An intermediate agent turn is ``<think>...</think><interaction_prompt>...</interaction_prompt>``; the
large LLM's reply comes back as ``<interaction_response>...</interaction_response>``; a final turn is
``<think>...</think><answer>...</answer>``. Generation of an agent turn stops at :data:`STOP_STRINGS`.

>>> prompt_turn("I need the capital.", "Capital of France?")
'<think>I need the capital.</think><interaction_prompt>Capital of France?</interaction_prompt>'
>>> answer_turn("It said Paris.", "Paris")
'<think>It said Paris.</think><answer>Paris</answer>'
"""

from __future__ import annotations

import re

__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "PROMPT_CLOSE",
    "PROMPT_OPEN",
    "RESPONSE_CLOSE",
    "RESPONSE_OPEN",
    "STOP_STRINGS",
    "THINK_CLOSE",
    "THINK_OPEN",
    "MODEL_NAME_PATTERN",
    "answer_turn",
    "check_model_name",
    "prompt_turn",
]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PROMPT_OPEN, PROMPT_CLOSE = "<interaction_prompt>", "</interaction_prompt>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<interaction_response>", "</interaction_response>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

#: An agent turn ends at the closing tag of a request or of an answer (or at the end-of-turn token).
STOP_STRINGS: tuple[str, ...] = (PROMPT_CLOSE, ANSWER_CLOSE)


def prompt_turn(think: str, prompt: str) -> str:
    """An intermediate turn: reasoning, then one request for the large LLM."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{PROMPT_OPEN}{prompt}{PROMPT_CLOSE}"


def answer_turn(think: str, answer: str) -> str:
    """A final turn: reasoning, then the answer."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


#: A name of one of several env LLMs, as the agent writes it at the start of a plain-text request (``[strong]
#: ...``).
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN + r"\Z")


def check_model_name(name: object, *, what: str = "env model name") -> str:
    """``name`` if the agent can reach it as ``[name]`` (letters, digits, ``_.-``, starting with a letter or
    digit), else a ``ValueError`` saying how to fix it: a name the agent is told but cannot write is a model
    nobody calls.

    >>> check_model_name("gpt-4o.mini_2")
    'gpt-4o.mini_2'
    >>> check_model_name("my model")
    Traceback (most recent call last):
    ...
    ValueError: env model name 'my model' cannot be named by the agent as [my model]: use letters, digits, '_', '.' and '-' only, starting with a letter or digit (e.g. 'my_model').
    """
    if not isinstance(name, str) or not _MODEL_NAME_RE.match(name):
        fixed = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_.-") or "model"
        raise ValueError(f"{what} {name!r} cannot be named by the agent as [{name}]: use letters, digits, "
                         f"'_', '.' and '-' only, starting with a letter or digit (e.g. {fixed!r}).")
    return name
