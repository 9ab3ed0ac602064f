"""Strategy-level view of :class:`PromptCollabEnv`: one action picks a prompting strategy for the next turn.

:class:`StrategyWrapper` exposes the text environment in spaces that stable-baselines3 accepts:

* **action**: ``Discrete(K)``; action ``k`` picks ``strategies[k]``, which deterministically writes a
  whole protocol turn (``<think>..</think><interaction_prompt>..</interaction_prompt>`` or
  ``<think>..</think><answer>..</answer>``) and steps the inner environment with it.
* **observation**: ``Box(-1, 1, (2 * d + T + K + 1,), float32)``: the embeddings (dimension ``d``) of
  the question and of the environment LLM's last reply, a one-hot of the turn index (``T`` =
  ``max_turns``) and a one-hot of the previous action (the extra slot means "none yet"). The
  decomposition plan's state is *not* observed: when to stop asking has to be read from the text.
  ``observe_plan=True`` appends the embedding of the plan's next sub-question (zeros once the plan
  is finished), which hands the policy the plan's state: with it, "``final`` when that block is
  zero, else ``decompose``" solves every bundled task, so it turns the problem into one bit.
* **reward**: the inner environment's reward, passed through (sparse: at the last turn).

What each built-in strategy reads: the question TEXT, the previous prompt and reply, and the
decomposition plan built from those. Never the gold answers, never ``Task.meta``.

=================  ===================================================================================
``direct``         asks the question as written.
``explain``        asks the model to explain the facts or steps it needs, then the question.
``decompose``      asks the next sub-question of a plan built from the question text
                   (:class:`Decomposition`); when the plan is finished, it asks the whole question again.
``verify``         asks the model to double-check its last answer by repeating the previous prompt
                   (on the first turn: the question with a request to verify each fact).
``final``          commits: ``<answer>`` holds the answer extracted from the last reply
                   (:func:`extract_answer`); the episode ends.
=================  ===================================================================================

User templates (``extra_templates``) are ``str.format`` strings with the fields ``{question}``,
``{last_reply}``, ``{last_prompt}``, ``{subquestion}`` (the plan's next sub-question, or the
question when the plan is finished), ``{candidate}`` (the answer :func:`extract_answer` sees in
the last reply) and ``{turn}``. A template that starts with ``answer:`` writes a final
``<answer>`` turn with the rest of the template; any other writes an ``<interaction_prompt>``.
A reply to a prompt that asked ``{subquestion}`` advances the plan, whoever asked it.

The decomposition heuristics are a hand-written splitter for the two question shapes of the bundled
synthetic tasks (a solver of our own templates: played to the end, it solves every held-out
synthetic task), and read only the text:

* nested noun phrases ("In which country was the founder of Vantrel Corp born?"): the named
  entity is the run of capitalised words that does not start the sentence; the innermost phrase
  is the one opened by the nearest ``the`` before it (ending at the entity after ``of``, or running
  to the end of the question for a relative clause: ``the city where X was born``,
  ``the company X works for``). Ask ``What is <phrase>?``, put the entity the reply names in place
  of the phrase, repeat until no phrase is left, then ask what is left.
* word problems with numbers: each sentence becomes an operation by keyword (``each`` ×,
  ``more``/``gets``/``finds`` +, ``gives away``/``loses`` −, ``equally``/``shares`` ÷), asked one at a
  time as ``What is A op B?`` with ``A`` the number the previous reply gave.
"""

from __future__ import annotations

import string
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from promptr1.envs.decompose import (
    Decomposition,
    extract_answer,
    find_entity,
    innermost_phrase,
    parse_word_problem,
)
from promptr1.envs.step_info import StepInfo
from promptr1.core.registry import UnknownNameError, did_you_mean
from promptr1.rewards.embedders import Embedder, make_embedder
from promptr1.core.tags import RESPONSE_CLOSE, RESPONSE_OPEN, answer_turn, prompt_turn

__all__ = [
    "BUILTIN_STRATEGIES",
    "Decomposition",
    "StrategyWrapper",
    "extract_answer",
    "find_entity",
    "innermost_phrase",
    "parse_word_problem",
]

BUILTIN_STRATEGIES: tuple[str, ...] = ("direct", "explain", "decompose", "verify", "final")

# --------------------------------------------------------------------------- the wrapper
def _turn(think: str, prompt: str) -> str:
    return prompt_turn(think, prompt)


def _final(think: str, answer: str) -> str:
    return answer_turn(think, answer)


class StrategyWrapper(gym.Env):
    """Choose a prompting strategy per turn over a text :class:`~promptr1.envs.collab_env.PromptCollabEnv`.

    Args:
        env: the text environment (its reward passes through unchanged).
        strategies: names of built-in strategies, in action order (default: all of
            :data:`BUILTIN_STRATEGIES`).
        embedder: ``"hashing"`` (default, fast), ``"minilm"``, ``"auto"`` or an object with
            ``encode(list[str])`` and ``dim`` (see :mod:`promptr1.rewards.embedders`).
        extra_templates: user strategies appended after the built-ins: a mapping ``name -> template``
            or a list of templates (named ``template0``, ...); see the module docstring for fields.
        observe_plan: also observe the embedding of the plan's next sub-question (hands the policy the
            plan's state; off by default).

    See the module docstring for the spaces and what each strategy reads.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        env: Any,
        strategies: Sequence[str] | None = None,
        embedder: str | Embedder = "hashing",
        extra_templates: Mapping[str, str] | Sequence[str] | None = None,
        render_mode: str | None = None,
        observe_plan: bool = False,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}.")
        self.env = env
        base = getattr(env, "unwrapped", env)  # gym.make() adds wrappers that do not forward attributes
        if not isinstance(getattr(base, "max_turns", None), int):
            raise TypeError(f"StrategyWrapper expects a PromptCollabEnv (or a wrapper of one), got {type(env).__name__}.")
        self.max_turns = base.max_turns  # the env's setting (the length of the turn one-hot); never written back
        names = list(BUILTIN_STRATEGIES if strategies is None else strategies)
        for n in names:
            if n not in BUILTIN_STRATEGIES:
                raise UnknownNameError(did_you_mean(
                    "strategy", n, list(BUILTIN_STRATEGIES),
                    extra="(or your own: extra_templates={'name': 'template with {question}'})"))
        self.templates: dict[str, str] = {}
        if extra_templates is not None:
            items = (extra_templates.items() if isinstance(extra_templates, Mapping)
                     else ((f"template{i}", t) for i, t in enumerate(extra_templates)))
            for name, template in items:
                if not isinstance(template, str) or not template.strip():
                    raise ValueError(f"template {name!r} must be a non-empty str, got {template!r}.")
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
                unknown = fields - {"question", "last_reply", "last_prompt", "subquestion", "candidate", "turn"}
                if unknown:
                    raise ValueError(f"template {name!r} uses unknown field(s) {sorted(unknown)}; available: "
                                     "question, last_reply, last_prompt, subquestion, candidate, turn.")
                if name in names or name in self.templates:
                    raise ValueError(f"strategy name {name!r} is used twice; give every template its own name.")
                self.templates[name] = template
        self.strategy_names: tuple[str, ...] = (*names, *self.templates)
        if not self.strategy_names:
            raise ValueError("a StrategyWrapper needs at least one strategy.")
        self.embedder: Embedder = make_embedder(embedder)
        self.render_mode = render_mode
        self.observe_plan = bool(observe_plan)

        k, d = len(self.strategy_names), int(self.embedder.dim)
        n_text = 3 if self.observe_plan else 2
        self.action_space = spaces.Discrete(k)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(n_text * d + self.max_turns + k + 1,), dtype=np.float32)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = 4096
        self._clear()

    # ------------------------------------------------------------------ state
    def _clear(self) -> None:
        self.question = ""
        self.last_prompt = ""
        self.last_reply = ""
        self.turn = 0
        self.last_action: int | None = None
        self.plan: Decomposition | None = None
        self._done = True

    def _embed(self, text: str) -> np.ndarray:
        if not text:
            return np.zeros(self.embedder.dim, dtype=np.float32)
        vec = self._cache.get(text)
        if vec is None:
            vec = np.asarray(self.embedder.encode([text])[0], dtype=np.float32)
            self._cache[text] = vec
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(text)
        return vec

    def _obs(self) -> np.ndarray:
        k = len(self.strategy_names)
        turn = np.zeros(self.max_turns, dtype=np.float32)
        turn[min(self.turn, self.max_turns - 1)] = 1.0
        last = np.zeros(k + 1, dtype=np.float32)
        last[k if self.last_action is None else self.last_action] = 1.0
        texts = [self._embed(self.question), self._embed(self.last_reply)]
        if self.observe_plan:
            sub = self.plan.next_subquestion if self.plan is not None else None
            texts.append(self._embed(sub or ""))
        obs = np.concatenate([*texts, turn, last])
        return np.clip(obs, -1.0, 1.0).astype(np.float32, copy=False)

    # ------------------------------------------------------------------ strategies
    def candidate(self) -> str:
        """The answer the ``final`` strategy would commit now."""
        return extract_answer(self.last_reply, self.last_prompt)

    def render_turn(self, action: int) -> tuple[str, bool]:
        """The protocol turn that strategy ``action`` writes now, and whether it asks the plan's sub-question."""
        name = self.strategy_names[action]
        q = self.question
        sub = self.plan.next_subquestion if self.plan is not None else None
        if name == "direct":
            return _turn("I will ask the question as it is.", q), False
        if name == "explain":
            return _turn("I will ask for an explanation first.",
                         f"First explain the facts or steps needed, then answer. {q}"), False
        if name == "decompose":
            if sub is None:
                return _turn("The sub-questions are answered; I will ask the whole question.", q), False
            return _turn("I will ask one sub-question.", sub), True
        if name == "verify":
            if not self.last_prompt:
                return _turn("I will ask and request a check.", f"Check each fact or step you use. {q}"), False
            return _turn("I will ask for a double-check.", f"Please double-check your last answer. {self.last_prompt}"), False
        if name == "final":
            cand = self.candidate()
            return _final(f"The last reply was: {self.last_reply}" if self.last_reply else "No reply yet.",
                          cand or "unknown"), False
        template = self.templates[name]
        values = {"question": q, "last_reply": self.last_reply, "last_prompt": self.last_prompt,
                  "subquestion": sub or q, "candidate": self.candidate(), "turn": self.turn}
        text = template.format(**values)
        if text.startswith("answer:"):
            return _final(f"Strategy {name}.", text[len("answer:"):].strip()), False
        return _turn(f"Strategy {name}.", text), "{subquestion}" in template and sub is not None

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        _, info = self.env.reset(seed=seed, options=options)
        self._clear()
        self.question = getattr(self.env, "unwrapped", self.env).task.question
        self.plan = Decomposition(self.question)
        self._done = False
        info = dict(info)
        info["strategies"] = self.strategy_names
        return self._obs(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("step() called on a finished episode (or before reset()). Call reset() first.")
        if np.ndim(action) != 0 or not self.action_space.contains(int(action)) or int(action) != action:
            raise ValueError(f"action must be one int in [0, {self.action_space.n}) naming a strategy "
                             f"{self.strategy_names}, got {action!r}.")
        action = int(action)
        text, asked_sub = self.render_turn(action)
        obs_text, reward, terminated, truncated, info = self.env.step(text)
        info = dict(info)
        info["strategy"] = self.strategy_names[action]
        info["agent_turn"] = text
        self.turn += 1
        self.last_action = action
        if terminated or truncated:
            self._done = True
        else:
            prompt = StepInfo.from_info(info).parsed_prompt or ""
            reply = obs_text
            if reply.startswith(RESPONSE_OPEN) and reply.endswith(RESPONSE_CLOSE):
                reply = reply[len(RESPONSE_OPEN):-len(RESPONSE_CLOSE)]
            self.last_prompt, self.last_reply = prompt, reply
            if asked_sub and self.plan is not None:
                self.plan.advance(reply)
        return self._obs(), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        return self.env.render() if hasattr(self.env, "render") else None

    def close(self) -> None:
        self.env.close()

    def __repr__(self) -> str:
        return (f"StrategyWrapper(strategies={self.strategy_names}, embedder={self.embedder!r}"
                f"{', observe_plan=True' if self.observe_plan else ''})")
