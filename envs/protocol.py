"""Parsing one agent turn of the Prompt-R1 protocol (docs/architecture.md, the turn protocol).

An intermediate turn is ``<think>...</think><interaction_prompt>...</interaction_prompt>``; inside
the prompt tag the agent may write plain text or a JSON tool call
``{"name": "prompt", "arguments": {"prompt": "..."}}`` (the official training format). A final
turn is ``<think>...</think><answer>...</answer>``. As in the reference, a prompt wins over an
answer when a turn holds both, and a turn with neither ends the episode.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from promptr1.core.tags import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    MODEL_NAME_PATTERN,
    PROMPT_CLOSE,
    PROMPT_OPEN,
    RESPONSE_CLOSE,
    RESPONSE_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
)

__all__ = ["ParsedTurn", "call_target", "extract_prompt", "parse_turn", "wrap_response"]


@dataclass(frozen=True)
class ParsedTurn:
    """What an agent turn asks for: ``kind`` is ``"prompt"``, ``"answer"`` or ``"none"``."""

    kind: str
    prompt: str | None = None
    answer: str | None = None
    think: str | None = None
    tool_call: bool = False
    inner: str | None = field(default=None, repr=False)
    """The raw text inside ``<interaction_prompt>`` (for framings that check it strictly)."""


def extract_prompt(inner: str) -> tuple[str, bool]:
    """The prompt text inside ``<interaction_prompt>``: a JSON tool call or plain text.

    Returns ``(prompt, was_tool_call)``.

    >>> extract_prompt('{"name": "prompt", "arguments": {"prompt": "Who founded X?"}}')
    ('Who founded X?', True)
    >>> extract_prompt('  Who founded X?  ')
    ('Who founded X?', False)
    >>> extract_prompt('{"name": "prompt", "arguments": "{\\\\"prompt\\\\": \\\\"hi\\\\"}"}')
    ('hi', True)
    """
    args = _call_arguments(inner)
    if args is not None and isinstance(args.get("prompt"), str):
        return args["prompt"].strip(), True
    return inner.strip(), False


def _call_arguments(inner: str) -> dict | None:
    """The arguments of a JSON tool call (``arguments``, or ``parameters``; an object or a JSON string), else None."""
    text = inner.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        call = json.loads(text)
    except (ValueError, RecursionError):
        return None
    args = call.get("arguments", call.get("parameters")) if isinstance(call, dict) else None
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None
    return args if isinstance(args, dict) else None


_TARGET_RE = re.compile(r"^\s*\[(" + MODEL_NAME_PATTERN + r")\]\s*")


def call_target(inner: str, prompt: str) -> tuple[str | None, str]:
    """Which env LLM a call names, and the prompt without the name (for envs with several env LLMs).

    A JSON call names it in its arguments (``{"name": "prompt", "arguments": {"prompt": ..., "model": "strong"}}``);
    a plain-text call starts with it in brackets (``[strong] What is ...?``). ``None``: the env's default.

    >>> call_target("[strong] Who founded X?", "[strong] Who founded X?")
    ('strong', 'Who founded X?')
    >>> call_target('{"name": "prompt", "arguments": {"prompt": "Who?", "model": "cheap"}}', "Who?")
    ('cheap', 'Who?')
    >>> call_target("Who founded X?", "Who founded X?")
    (None, 'Who founded X?')
    """
    args = _call_arguments(inner)
    if args is not None and args.get("model") is not None:
        return str(args["model"]), prompt
    m = _TARGET_RE.match(prompt)
    if m:
        return m.group(1), prompt[m.end():]
    return None, prompt


def parse_turn(text: str) -> ParsedTurn:
    """Classify one agent turn.

    >>> parse_turn("<think>a</think><interaction_prompt>Who is B?</interaction_prompt>").prompt
    'Who is B?'
    >>> parse_turn("<think>done</think><answer> Paris </answer>")
    ParsedTurn(kind='answer', prompt=None, answer='Paris', think='done', tool_call=False)
    >>> parse_turn("I don't know").kind
    'none'
    """
    think = _between(text, THINK_OPEN, THINK_CLOSE)
    if think is not None:
        think = think.strip()
    inner = _between(text, PROMPT_OPEN, PROMPT_CLOSE)
    if inner is not None:
        prompt, tool_call = extract_prompt(inner)
        return ParsedTurn("prompt", prompt=prompt, think=think, tool_call=tool_call, inner=inner)
    answer = _between(text, ANSWER_OPEN, ANSWER_CLOSE)
    if answer is not None:
        return ParsedTurn("answer", answer=answer.strip(), think=think)
    return ParsedTurn("none", think=think)


def _between(text: str, open_tag: str, close_tag: str) -> str | None:
    """What ``re.search(open_tag + "(.*?)" + close_tag, text, re.DOTALL).group(1)`` finds (None: no match), with two
    ``str.find`` calls: the first opening tag followed by a closing one is the first opening tag (no closing tag
    starts inside an opening one), and the lazy group ends at the first closing tag after it.

    >>> _between("a<t>x</t>y<t>z</t>", "<t>", "</t>"), _between("<t>x", "<t>", "</t>")
    ('x', None)
    """
    i = text.find(open_tag)
    if i < 0:
        return None
    i += len(open_tag)
    j = text.find(close_tag, i)
    return None if j < 0 else text[i:j]


def wrap_response(reply: str, max_chars: int) -> str:
    """The env LLM's reply as the agent sees it, truncated to ``max_chars`` characters.

    >>> wrap_response("Paris is the capital.", 5)
    '<interaction_response>Paris</interaction_response>'
    """
    return RESPONSE_OPEN + reply[:max_chars] + RESPONSE_CLOSE
