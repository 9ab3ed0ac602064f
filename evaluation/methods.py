"""The methods an evaluation compares, and how the two baselines ask the environment LLM.

* ``direct``: the environment LLM alone, one call on the raw question;
* ``cot``: the environment LLM with a chain-of-thought instruction (:data:`COT_INSTRUCTION`), the
  answer read from a final ``Answer:`` line;
* ``agent``: the configured agent model (``--model``) in front of the environment LLM, multi-turn;
* ``agent:MODEL``: another agent model (``smollm2``, ``tiny``, an HF id or folder, a training run
  folder: its latest checkpoint);
* ``LABEL=METHOD``: any of these under a short name in the report (``trained=agent:runs/x``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

__all__ = ["COT_INSTRUCTION", "MethodSpec", "baseline_messages", "parse_method"]

#: Our wording of the chain-of-thought baseline's instruction.
COT_INSTRUCTION = (
    "Think step by step and show your reasoning. Then write the final answer alone on the last line, "
    "in the form: Answer: <final answer>"
)


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method: ``kind`` in direct/cot/agent, ``model`` for agents (empty: the configured
    model), ``label`` for reports and result keys."""

    kind: str
    model: str = ""
    label: str = ""


def parse_method(text: str, default_model: str = "") -> MethodSpec:
    """Parse ``direct``, ``cot``, ``agent``, ``agent:MODEL`` or ``LABEL=METHOD``.

    A bare ``agent`` is ``agent:<default_model>`` (the configured ``--model``).

    >>> parse_method("agent:runs/x/checkpoint-final")
    MethodSpec(kind='agent', model='runs/x/checkpoint-final', label='agent:runs/x/checkpoint-final')
    >>> parse_method("agent", default_model="tiny")
    MethodSpec(kind='agent', model='tiny', label='agent:tiny')
    >>> parse_method("trained=agent:runs/x").label
    'trained'
    >>> parse_method("cott")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'cott'. Expected 'direct', 'cot', 'agent' or 'agent:MODEL' ... Did you mean 'cot'?
    """
    label, sep, body = text.partition("=")
    if not sep:
        label, body = "", text
    label, body = label.strip(), body.strip()
    kind, colon, model = body.partition(":")
    if kind in ("direct", "cot") and not colon:
        return MethodSpec(kind, "", label or kind)
    if kind == "agent" and not colon and default_model:
        return MethodSpec("agent", default_model, label or f"agent:{default_model}")
    if kind == "agent" and model:
        return MethodSpec("agent", model, label or body)
    if kind == "agent":
        raise ValueError(f"method {text!r} names no model: write 'agent:MODEL', or set the agent model (--model).")
    hint = difflib.get_close_matches(body, ["direct", "cot", "agent"], n=1)
    raise ValueError(
        f"unknown method {text!r}. Expected 'direct', 'cot', 'agent' or 'agent:MODEL' (optionally 'LABEL=...')."
        + (f" Did you mean {hint[0]!r}?" if hint else "")
    )


def baseline_messages(question: str, kind: str) -> list[dict[str, str]]:
    """The one-message chat a ``direct`` or ``cot`` baseline sends to the environment LLM.

    >>> baseline_messages("2+2?", "direct")
    [{'role': 'user', 'content': '2+2?'}]
    >>> baseline_messages("2+2?", "cot")[0]["content"].endswith(COT_INSTRUCTION)
    True
    """
    if kind not in ("direct", "cot"):
        raise ValueError(f"baseline_messages: kind must be 'direct' or 'cot', got {kind!r}.")
    return [{"role": "user", "content": question + ("\n\n" + COT_INSTRUCTION if kind == "cot" else "")}]
