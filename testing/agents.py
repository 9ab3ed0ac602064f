"""Test doubles for the agent side: a scripted, text-level agent policy.

:class:`ScriptedAgentPolicy` satisfies :class:`promptr1.evaluation.policies.AgentPolicy`
(``act(chats) -> turns``), so an evaluation can be run end to end with metrics known by
construction and no model at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["ScriptedAgentPolicy"]


class ScriptedAgentPolicy:
    """A deterministic agent for tests and demos.

    ``script`` is a function ``chat -> turn`` or a list of turns indexed by the agent's turn
    number (the count of assistant messages so far; the last one repeats).
    :meth:`relay` forwards the question to the environment LLM and answers with its reply.

    >>> p = ScriptedAgentPolicy(["<think>a</think><interaction_prompt>q</interaction_prompt>",
    ...                          "<think>b</think><answer>x</answer>"])
    >>> p.act([[{"role": "user", "content": "Q"}]])[0][-21:]
    '</interaction_prompt>'
    >>> chat = [{"role": "user", "content": "Question: Capital of France?\\nAnswer in tags."}]
    >>> ScriptedAgentPolicy.relay().act([chat])[0]
    '<think>Ask the expert.</think><interaction_prompt>Capital of France?</interaction_prompt>'
    """

    def __init__(self, script: Sequence[str] | Callable[[list[dict[str, str]]], str]) -> None:
        if not callable(script) and len(script) == 0:
            raise ValueError(
                "ScriptedAgentPolicy needs at least one turn, e.g. ['<think>.</think><answer>x</answer>']."
            )
        self.script = script
        self.calls = 0

    def act(self, batch_of_chats: list[list[dict[str, str]]]) -> list[str]:
        self.calls += 1
        out = []
        for chat in batch_of_chats:
            if callable(self.script):
                out.append(self.script(chat))
            else:
                k = sum(1 for m in chat if m["role"] == "assistant")
                out.append(self.script[min(k, len(self.script) - 1)])
        return out

    @classmethod
    def relay(cls) -> ScriptedAgentPolicy:
        """Turn 1 sends the question (the first user message without its instruction); turn 2 answers
        with the env LLM's reply."""

        def step(chat: list[dict[str, str]]) -> str:
            if not any(m["role"] == "assistant" for m in chat):
                from promptr1.envs.tasks import split_prompt

                question, _ = split_prompt(next(m["content"] for m in chat if m["role"] == "user"))
                return f"<think>Ask the expert.</think><interaction_prompt>{question}</interaction_prompt>"
            reply = chat[-1]["content"]
            reply = reply.removeprefix("<interaction_response>").removesuffix("</interaction_response>")
            return f"<think>Use the reply.</think><answer>{reply.strip()}</answer>"

        return cls(step)
