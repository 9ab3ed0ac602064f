"""How the agent side of an episode is framed: its system prompt, how a reply comes back, where a turn stops.

Two framings are built in (``PromptCollabEnv(framing=...)``, ``--framing`` on every command):

``ours`` (default)
    Our agent system prompt; a reply comes back as ``<interaction_response>REPLY</interaction_response>``;
    a prompt may be plain text or the JSON tool call; generation stops at ``</interaction_prompt>`` or
    ``</answer>``. Forgiving, so that a small untrained model can learn the protocol.

``reference``
    The official code's agent side, re-derived from its logic (no text of it is copied):

    * the agent's system message describes one tool, ``prompt``, by its JSON schema, and asks for calls as
      ``<interaction_prompt>{"name": ..., "arguments": {...}}</interaction_prompt>``;
    * a call must be that JSON: text that is not JSON, a call without a name, another tool's name or
      arguments without a string ``prompt`` are answered with an error message (``Error: JSONDecodeError``,
      ``Error: No tool name``, ``Error: ToolNotFoundError``, ``Error: Invalid tool arguments``) and the large
      LLM is not called;
    * a reply comes back as ``<interaction_response>\\n{"results": [REPLY]}\\n</interaction_response>``, the
      JSON text cut to ``max_response_chars`` with ``...`` appended when longer;
    * every agent turn after the first starts with a prefilled ``<think>\\n`` (context, not generated; it is
      part of the turn the reward scores);
    * generation stops only at the end-of-turn token.

    The reference's system-prompt sentences are its own prose, which we do not copy: ours say the same
    things. For a bit-exact system message, pass its text as ``agent_system_prompt``.

>>> ref = FRAMINGS.get("reference")
>>> ref.wrap_reply("Paris", 2048)
'<interaction_response>\\n{"results": ["Paris"]}\\n</interaction_response>'
>>> ref.check_call("Who is B?")
(None, 'Error: JSONDecodeError')
>>> ref.check_call('{"name": "prompt", "arguments": {"prompt": "Who is B?"}}')
('Who is B?', None)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from promptr1.registry import Registry
from promptr1.tags import PROMPT_CLOSE, PROMPT_OPEN, RESPONSE_CLOSE, RESPONSE_OPEN, STOP_STRINGS, THINK_OPEN

__all__ = ["FRAMINGS", "Framing", "OurFraming", "PROMPT_TOOL", "ReferenceFraming"]

#: The one tool of the reference framing, as a function-calling schema (our wording of its description).
PROMPT_TOOL: dict = {
    "type": "function",
    "function": {
        "name": "prompt",
        "description": "Send the large language model one request: the question, your analysis of it, and "
                       "what you need from it.",
        "parameters": {
            "type": "object",
            "properties": {"prompt": {"type": "string", "description": "The request for the large model."}},
            "required": ["prompt"],
        },
    },
}


@dataclass(frozen=True)
class Framing:
    """The agent-side conventions of an episode (see the module docstring)."""

    name: str
    #: Generation of an agent turn stops at these strings (empty: only at the end-of-turn token).
    stop_strings: tuple[str, ...]
    #: Text that opens every agent turn after the first (context the agent continues from).
    turn_prefill: str = ""

    def agent_system_prompt(self, base: str | None) -> str | None:
        """The agent's system message, from the env's ``agent_system_prompt`` (``None``: none)."""
        return base

    def wrap_reply(self, reply: str, max_chars: int) -> str:
        """The observation that carries the large LLM's reply back to the agent."""
        return RESPONSE_OPEN + reply[:max_chars] + RESPONSE_CLOSE

    def check_call(self, inner: str) -> tuple[str | None, str | None]:
        """``(prompt, None)`` for a call to make, or ``(None, error)`` for one to refuse."""
        raise NotImplementedError

    def error_reply(self, error: str) -> str:
        """The observation for a refused call."""
        return RESPONSE_OPEN + error + RESPONSE_CLOSE


class OurFraming(Framing):
    def check_call(self, inner: str) -> tuple[str | None, str | None]:
        from promptr1.envs.protocol import extract_prompt

        return extract_prompt(inner)[0], None


class ReferenceFraming(Framing):
    def agent_system_prompt(self, base: str | None) -> str | None:
        intro = base if base is not None else "You are a helpful assistant."
        return (
            f"{intro}\n\n# Tools\n\nTo answer the user's question you can consult a large language model through a "
            "tool. Give it your explanation and analysis of the question, and your reasoning so far.\n\n"
            f"The tool's signature, inside <tools></tools> tags:\n<tools>\n{json.dumps(PROMPT_TOOL)}\n</tools>\n\n"
            f"To call it, write a JSON object with the tool's name and its arguments inside {PROMPT_OPEN}"
            f"{PROMPT_CLOSE} tags:\n{PROMPT_OPEN}\n"
            '{"name": <tool-name>, "arguments": <arguments as a JSON object>}\n'
            f"{PROMPT_CLOSE}"
        )

    def wrap_reply(self, reply: str, max_chars: int) -> str:
        body = json.dumps({"results": [reply.strip()]})
        if len(body) > max_chars:
            body = body[:max_chars] + "..."
        return f"{RESPONSE_OPEN}\n{body}\n{RESPONSE_CLOSE}"

    def error_reply(self, error: str) -> str:
        return f"{RESPONSE_OPEN}\n{error}\n{RESPONSE_CLOSE}"

    def check_call(self, inner: str) -> tuple[str | None, str | None]:
        try:
            call = json.loads(inner)
        except (ValueError, RecursionError):
            return None, "Error: JSONDecodeError"
        if not isinstance(call, dict) or "name" not in call:
            return None, "Error: No tool name"
        if call["name"] != PROMPT_TOOL["function"]["name"]:
            return None, "Error: ToolNotFoundError"
        args = call.get("arguments")
        if not isinstance(args, dict) or not isinstance(args.get("prompt"), str):
            return None, "Error: Invalid tool arguments"
        return args["prompt"], None


#: Framings by name (``PromptCollabEnv(framing=...)``).
FRAMINGS: Registry[Framing] = Registry(
    "framing",
    {
        "ours": OurFraming("ours", STOP_STRINGS),
        "reference": ReferenceFraming("reference", (), turn_prefill=THINK_OPEN + "\n"),
    },
)
