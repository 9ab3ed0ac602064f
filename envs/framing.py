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
      LLM is not called (JSON nested deeper than Python's parser reaches counts as text that is not JSON);
    * a reply comes back as ``<interaction_response>\\n{"results": [REPLY]}\\n</interaction_response>``, the
      JSON text cut to ``max_response_chars`` with ``...`` appended when longer;
    * every agent turn after the first starts with a prefilled ``<think>\\n`` (context, not generated; it is
      part of the turn the reward scores);
    * generation stops only at the end-of-turn token.

    The reference's system-prompt sentences are its own prose, which we do not copy: ours say the same
    things. For a bit-exact system message, pass its whole text as ``agent_system_prompt``: a text you give is
    used verbatim (our ``# Tools`` block is added only to the default introduction).

    The agent's end-of-turn token is kept and the reply's frame opens with its own, so the stream holds two
    before each reply, as the reference's does (``doubled_end_token``).

``reference-eval``
    The official *evaluation* scripts' agent side (``--preset reference``): the reference framing, and

    * a plain-text prompt is wrapped into the JSON tool call before it is checked (JSON nested too deep to read
      is left as it is, so the check refuses it), and text after the first
      ``</interaction_prompt>`` is dropped (:meth:`Framing.preprocess_action`);
    * the agent model is given the whole conversation as one user message each turn (:meth:`Framing.agent_view`):
      ``"\\n<|im_start|>system\\n" + system + "<|im_end|>\\n<|im_start|>\\nuser\\n" + question + "\\n"``, then
      per turn the agent's text + ``<|im_end|>`` and the reply framed as
      ``<|im_end|>\\n<|im_start|>user\\nREPLY<|im_end|>\\n<|im_start|>assistant\\n<think>\\n``; so each turn
      starts a fresh assistant message (no prefill);
    * an episode that runs out of turns predicts ``Maximum turns reached without final answer``, one that
      outgrows the context ``Maximum context length exceeded``; the context is full when the next prompt's
      characters / 4 + the agent's token budget exceed 40,960 (``context_estimate_limit``), as the scripts
      estimate it (or when its tokens reach ``max_seq_len``).

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
import re
from dataclasses import dataclass

from promptr1.envs.protocol import extract_prompt
from promptr1.core.registry import Registry
from promptr1.core.tags import PROMPT_CLOSE, PROMPT_OPEN, RESPONSE_CLOSE, RESPONSE_OPEN, STOP_STRINGS, THINK_OPEN

__all__ = ["FRAMINGS", "Framing", "OurFraming", "PROMPT_TOOL", "ReferenceEvalFraming", "ReferenceFraming",
           "reference_history_prompt", "reference_history_reply", "tool_schema_text"]

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


def tool_schema_text(description: str | None = None) -> str:
    """The ``prompt`` tool's line inside ``<tools>``: our schema (:data:`PROMPT_TOOL`) by default; ``description``
    (``agent_tool_description``) is either a whole function schema as a JSON object, used verbatim (stripped), or a
    text that replaces the tool's description in our schema. The tool must stay ``prompt`` with a string ``prompt``
    argument: that is what calls are checked against.

    >>> tool_schema_text("Ask it.")[:80]
    '{"type": "function", "function": {"name": "prompt", "description": "Ask it.", "p'
    """
    if not description or not description.strip():
        return json.dumps(PROMPT_TOOL)
    text = description.strip()
    if not text.startswith("{"):
        return json.dumps({**PROMPT_TOOL, "function": {**PROMPT_TOOL["function"], "description": text}})
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"agent_tool_description starts with '{{' but is not a JSON object ({exc}); give the tool's "
                         'whole schema, e.g. {"type": "function", "function": {"name": "prompt", ...}}, or a plain '
                         "description.") from None
    function = schema.get("function") if isinstance(schema, dict) else None
    params = function.get("parameters") if isinstance(function, dict) else None
    props = params.get("properties") if isinstance(params, dict) else None
    if not (isinstance(function, dict) and function.get("name") == "prompt" and isinstance(props, dict)
            and "prompt" in props):
        raise ValueError('agent_tool_description as JSON must describe the tool "prompt" with a "prompt" parameter '
                         '({"type": "function", "function": {"name": "prompt", "description": ..., "parameters": '
                         '{"type": "object", "properties": {"prompt": {...}}}}}): calls are checked against it.')
    return text


@dataclass(frozen=True)
class Framing:
    """The agent-side conventions of an episode (see the module docstring)."""

    name: str
    #: Generation of an agent turn stops at these strings (empty: only at the end-of-turn token).
    stop_strings: tuple[str, ...]
    #: Text that opens every agent turn after the first (context the agent continues from).
    turn_prefill: str = ""
    #: Keep the agent's end-of-turn token before the reply's frame, which opens with its own (two in a row).
    doubled_end_token: bool = False
    #: Give the agent model the whole conversation as one user message each turn (:meth:`agent_view`).
    one_message: bool = False
    #: The prediction of an episode that ran out of turns / outgrew the context (None: its answer, if any).
    out_of_turns_prediction: str | None = None
    overflow_prediction: str | None = None
    #: End an episode when its next prompt's characters / 4 + the agent's token budget exceed this (None: tokens
    #: are counted, ``max_seq_len``); the reference's evaluation estimates its context so, against 40,960.
    context_estimate_limit: int | None = None

    def agent_system_prompt(self, base: str | None, tool: str | None = None) -> str | None:
        """The agent's system message, from the env's ``agent_system_prompt`` (``None``: none) and
        ``agent_tool_description`` (only the reference framings describe a tool)."""
        if tool:
            raise ValueError(f"agent_tool_description is for the reference framings (the {self.name!r} framing's system "
                             "text describes no tool); pass framing='reference' or leave it out.")
        return base

    def preprocess_action(self, action: str) -> str:
        """The agent's turn as the env reads, scores and records it."""
        return action

    def agent_view(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The chat the agent model is given, from the episode's chat (only used when ``one_message``)."""
        return messages

    def wrap_reply(self, reply: str, max_chars: int) -> str:
        """The observation that carries the large LLM's reply back to the agent."""
        return RESPONSE_OPEN + reply[:max_chars] + RESPONSE_CLOSE

    def seen_reply(self, reply: str, max_chars: int) -> str:
        """The part of the reply the agent was shown (what ``env_history="seen"`` keeps for the env LLM)."""
        return reply[:max_chars]

    def check_call(self, inner: str) -> tuple[str | None, str | None]:
        """``(prompt, None)`` for a call to make, or ``(None, error)`` for one to refuse."""
        raise NotImplementedError

    def error_reply(self, error: str) -> str:
        """The observation for a refused call."""
        return RESPONSE_OPEN + error + RESPONSE_CLOSE


class OurFraming(Framing):
    def check_call(self, inner: str) -> tuple[str | None, str | None]:
        return extract_prompt(inner)[0], None


class ReferenceFraming(Framing):
    def agent_system_prompt(self, base: str | None, tool: str | None = None) -> str | None:
        if base is not None:  # the user's text, verbatim (a bit-exact system message)
            if tool:
                raise ValueError("agent_tool_description is used in our default system text only: with your own "
                                 "agent_system_prompt, write the tool's schema into that text.")
            return base
        intro = "You are a helpful assistant."
        return (
            f"{intro}\n\n# Tools\n\nTo answer the user's question you can consult a large language model through a "
            "tool. Give it your explanation and analysis of the question, and your reasoning so far.\n\n"
            f"The tool's signature, inside <tools></tools> tags:\n<tools>\n{tool_schema_text(tool)}\n</tools>\n\n"
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

    def seen_reply(self, reply: str, max_chars: int) -> str:
        body = json.dumps({"results": [reply.strip()]})
        if len(body) <= max_chars:
            return reply.strip()
        # the visible prefix of the JSON string, decoded (an escape cut in half is left out)
        escaped = body[len('{"results": ["'):max_chars]
        for cut in range(7):
            try:
                return json.loads('"' + escaped[: len(escaped) - cut] + '"')
            except ValueError:
                continue
        return ""

    def error_reply(self, error: str) -> str:
        return f"{RESPONSE_OPEN}\n{error}\n{RESPONSE_CLOSE}"

    def check_call(self, inner: str) -> tuple[str | None, str | None]:
        try:
            call = json.loads(inner)
        except (ValueError, RecursionError):
            return None, "Error: JSONDecodeError"
        if not isinstance(call, dict) or "name" not in call:
            return None, "Error: No tool name"
        if "arguments" not in call:  # checked before the tool's name, as the reference's batched step does
            return None, "Error: No tool arguments"
        if call["name"] != PROMPT_TOOL["function"]["name"]:
            return None, "Error: ToolNotFoundError"
        args = call.get("arguments")
        if not isinstance(args, dict) or not isinstance(args.get("prompt"), str):
            return None, "Error: Invalid tool arguments"
        return args["prompt"], None


_CALL_RE = re.compile(re.escape(PROMPT_OPEN) + "(.*?)" + re.escape(PROMPT_CLOSE), re.DOTALL)
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"


class ReferenceEvalFraming(ReferenceFraming):
    """The official evaluation scripts' agent side (see the module docstring)."""

    def preprocess_action(self, action: str) -> str:
        for inner in _CALL_RE.findall(action):
            content = inner.strip()
            try:
                json.loads(content)
                continue
            except RecursionError:  # JSON nested too deep to read: left as is, so the check refuses it
                continue
            except ValueError:
                pass
            call = json.dumps({"name": PROMPT_TOOL["function"]["name"], "arguments": {"prompt": content}})
            action = action.replace(f"{PROMPT_OPEN}{inner}{PROMPT_CLOSE}", f"{PROMPT_OPEN}\n{call}\n{PROMPT_CLOSE}")
        if PROMPT_OPEN in action and PROMPT_CLOSE in action:
            action = action.split(PROMPT_CLOSE)[0] + PROMPT_CLOSE
        return action

    def agent_view(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        rest = list(messages)
        system = rest.pop(0)["content"] if rest and rest[0]["role"] == "system" else ""
        question = rest.pop(0)["content"] if rest else ""
        text = f"\n{_IM_START}system\n{system}{_IM_END}\n{_IM_START}\nuser\n{question}\n"
        for i in range(0, len(rest) - 1, 2):
            turn, reply = rest[i]["content"], rest[i + 1]["content"]
            text += (f"{self.preprocess_action(turn)}{_IM_END}{_IM_END}\n{_IM_START}user\n{reply}{_IM_END}\n"
                     f"{_IM_START}assistant\n{THINK_OPEN}\n")
        return [{"role": "user", "content": text}]


def reference_history_reply(reply: str, max_chars: int) -> str:
    """What the reference keeps of a reply in the env LLM's history: it re-parses the reply's JSON text as the agent
    saw it, so a reply whose ``{"results": [...]}`` text is longer than ``max_chars`` (cut, unparseable) leaves an
    empty assistant message.

    >>> reference_history_reply(" Paris ", 2048), reference_history_reply("x" * 3000, 2048)
    ('Paris', '')
    """
    return reply.strip() if len(json.dumps({"results": [reply.strip()]})) <= max_chars else ""


def _as_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def reference_history_prompt(action: str, evaluation: bool = False) -> str | None:
    """The user message the reference adds to the env LLM's history for an agent turn that called the tool, whether
    the call succeeded or was refused (None: it adds nothing; the reply it pairs with a refused call is empty).

    Training (``generation.py``): the first ``<interaction_prompt>`` whose text is a JSON object with an
    ``arguments`` object holding ``prompt``; recorded only when that prompt is non-empty (so an empty prompt, sent to
    the env LLM, leaves no trace). Evaluation (``batch_inference.py``): the first ``<interaction_prompt>``'s text,
    stripped, when non-empty: its ``arguments.prompt`` when it has one, else that raw text (a JSON call without
    ``prompt`` is recorded as its JSON).

    >>> call = '<interaction_prompt>{"name": "search", "arguments": {"prompt": "Who is B?"}}</interaction_prompt>'
    >>> reference_history_prompt(call), reference_history_prompt(call, evaluation=True)
    ('Who is B?', 'Who is B?')
    >>> empty = '<interaction_prompt>{"name": "prompt", "arguments": {"prompt": ""}}</interaction_prompt>'
    >>> reference_history_prompt(empty), reference_history_prompt(empty, evaluation=True)
    (None, '')
    >>> reference_history_prompt('<interaction_prompt>{"name": "prompt"}</interaction_prompt>', evaluation=True)
    '{"name": "prompt"}'
    """
    calls = _CALL_RE.findall(action)
    if evaluation:
        content = calls[0].strip() if calls else ""
        if not content:
            return None
        try:
            call = json.loads(content)
        except (ValueError, RecursionError):
            return content
        if isinstance(call, dict) and "arguments" in call:
            args = call["arguments"]
            return _as_text(args.get("prompt", content)) if isinstance(args, dict) else content
        return content
    for inner in calls:
        try:
            call = json.loads(inner)
        except (ValueError, RecursionError):
            continue
        if isinstance(call, dict) and isinstance(call.get("arguments"), dict) and "prompt" in call["arguments"]:
            prompt = call["arguments"]["prompt"]
            return _as_text(prompt) if prompt else None
    return None


#: Framings by name (``PromptCollabEnv(framing=...)``).
FRAMINGS: Registry[Framing] = Registry(
    "framing",
    {
        "ours": OurFraming("ours", STOP_STRINGS),
        "reference": ReferenceFraming("reference", (), turn_prefill=THINK_OPEN + "\n", doubled_end_token=True),
        "reference-eval": ReferenceEvalFraming("reference-eval", (), one_message=True,
                                               out_of_turns_prediction="Maximum turns reached without final answer",
                                               overflow_prediction="Maximum context length exceeded",
                                               context_estimate_limit=40_960),
    },
)
