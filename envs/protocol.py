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

from promptr1.tags import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    PROMPT_CLOSE,
    PROMPT_OPEN,
    RESPONSE_CLOSE,
    RESPONSE_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
)

__all__ = ["ParsedTurn", "parse_turn", "wrap_response", "extract_prompt"]

_PROMPT_RE = re.compile(re.escape(PROMPT_OPEN) + "(.*?)" + re.escape(PROMPT_CLOSE), re.DOTALL)
_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + "(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)
_THINK_RE = re.compile(re.escape(THINK_OPEN) + "(.*?)" + re.escape(THINK_CLOSE), re.DOTALL)


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
    text = inner.strip()
    if text.startswith("{") and text.endswith("}"):
        try:
            call = json.loads(text)
        except (ValueError, RecursionError):
            call = None
        if isinstance(call, dict):
            args = call.get("arguments", call.get("parameters"))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except (ValueError, RecursionError):
                    args = None
            if isinstance(args, dict) and isinstance(args.get("prompt"), str):
                return args["prompt"].strip(), True
    return text, False


def parse_turn(text: str) -> ParsedTurn:
    """Classify one agent turn.

    >>> parse_turn("<think>a</think><interaction_prompt>Who is B?</interaction_prompt>").prompt
    'Who is B?'
    >>> parse_turn("<think>done</think><answer> Paris </answer>")
    ParsedTurn(kind='answer', prompt=None, answer='Paris', think='done', tool_call=False)
    >>> parse_turn("I don't know").kind
    'none'
    """
    think_m = _THINK_RE.search(text)
    think = think_m.group(1).strip() if think_m else None
    prompt_m = _PROMPT_RE.search(text)
    if prompt_m:
        prompt, tool_call = extract_prompt(prompt_m.group(1))
        return ParsedTurn("prompt", prompt=prompt, think=think, tool_call=tool_call, inner=prompt_m.group(1))
    answer_m = _ANSWER_RE.search(text)
    if answer_m:
        return ParsedTurn("answer", answer=answer_m.group(1).strip(), think=think)
    return ParsedTurn("none", think=think)


def wrap_response(reply: str, max_chars: int) -> str:
    """The env LLM's reply as the agent sees it, truncated to ``max_chars`` characters.

    >>> wrap_response("Paris is the capital.", 5)
    '<interaction_response>Paris</interaction_response>'
    """
    return RESPONSE_OPEN + reply[:max_chars] + RESPONSE_CLOSE
