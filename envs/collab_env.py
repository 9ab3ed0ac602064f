"""``PromptCollabEnv``: the Prompt-R1 collaboration as a Gymnasium environment.

The agent (the policy being trained) sees text and acts with text. Each step it writes one turn:

* ``<think>...</think><interaction_prompt>PROMPT</interaction_prompt>``: the environment sends
  ``PROMPT`` to the environment LLM (with the earlier prompts and replies as chat history, never
  the agent's thinking) and returns its reply wrapped in ``<interaction_response>...``;
* ``<think>...</think><answer>ANSWER</answer>``: the episode terminates with the
  dual-constrained reward (:mod:`promptr1.rewards`);
* a turn with neither tag ends the episode too (as in the reference); reaching ``max_turns``
  truncates it and scores it as the reference does: every prompt turn is intermediate, and the last
  block is the next turn's lone ``<think>\n`` prefill (no answer).

Rewards are sparse: 0.0 on every step but the last, whose ``info`` alone carries
``reward_components`` and an ``episode`` summary. If the environment LLM fails after its
retries, the episode is truncated, ``info["env_error"]`` says why, and the observation is empty:
error text never reaches the agent as if the large LLM had said it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from promptr1.envs.framing import FRAMINGS, Framing, reference_history_prompt, reference_history_reply
from promptr1.envs.protocol import ParsedTurn, call_target, parse_turn
from promptr1.envs.spaces import UnicodeText
from promptr1.envs.step_info import StepInfo
from promptr1.envs.tasks import Task, load_tasks
from promptr1.llm_backends import Completion, EnvLLMError, LLMBackend, make_backend
from promptr1.llm_backends.pricing import call_cost, check_prices
from promptr1.rewards import (
    ANSWER_METRICS,
    COST_AWARE_VARIANTS,
    REWARD_VARIANTS,
    answer_metric_for,
    compute_reward,
    cost_penalty,
)
from promptr1.core.registry import did_you_mean
from promptr1.core.settings import ENV_HISTORY_MODES, EpisodeSettings
from promptr1.core.tags import THINK_OPEN, check_model_name

#: What the reference prefills at the start of every agent turn after the first.
REFERENCE_TURN_PREFILL = THINK_OPEN + "\n"

__all__ = ["DEFAULT_AGENT_SYSTEM_PROMPT", "DEFAULT_ENV_SYSTEM_PROMPT", "ENV_HISTORY_MODES", "PromptCollabEnv"]

#: Values of ``env_history``: what the env LLM's history keeps of each of its replies.

DEFAULT_AGENT_SYSTEM_PROMPT = (
    "You are a small assistant that answers questions by consulting a large language model. "
    "Each turn, think inside <think></think>, then either ask the large model one request inside "
    "<interaction_prompt></interaction_prompt> or give the final answer inside <answer></answer>."
)

DEFAULT_ENV_SYSTEM_PROMPT = (
    "You are a helpful assistant. Read the conversation so far and the current request, "
    "then help complete the task or answer the question."
)

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A step that is waiting for the environment LLM."""

    messages: list[dict[str, str]]
    parsed: ParsedTurn
    action_truncated: bool
    target: str | None = None  # which env LLM (several env LLMs only)


class PromptCollabEnv(gym.Env):
    """Prompt-R1's agent/large-LLM collaboration with text observations and actions.

    Args:
        task: where questions come from: ``"synthetic"`` (bundled; ``"synthetic:test"`` for the
            held-out split), a ``.parquet`` file in the official schema, a ``.jsonl`` file with
            ``question``/``answers``, a :class:`Task`, or a list of any of these.
        env_llm: the large LLM: a spec string (``"sim"``, ``"openai:MODEL"``, ``"hf:ID"``,
            ``"smollm2"``, ...) or an :class:`~promptr1.llm_backends.LLMBackend` instance.
        settings, **episode: the episode's settings, :class:`~promptr1.core.settings.EpisodeSettings` (every
            command's; docs/configuration.md lists them with their defaults): ``max_turns`` (ref: 5),
            ``max_response_chars`` (ref: 2048), ``reward_variant``, ``answer_metric``, ``framing``, ``env_history``,
            ``agent_system_prompt``, ``agent_tool_description``, ``cost_weight``, ``cost_reference_usd``; as a group
            (``settings=``) and/or as keyword arguments (``max_turns=3``), which win. Each is declared, defaulted
            and checked once, there.
        max_action_chars: longer agent turns are cut and flagged (``info["action_truncated"]``).
        max_observation_chars: size of the observation space.
        split: the split used for ``"synthetic"`` tasks.
        task_order: ``"random"`` (drawn with ``self.np_random``) or ``"sequential"``.
        sampling: keyword arguments for every env LLM call (``temperature``, ``max_tokens``, ...).
        env_system_prompt: the env LLM's system message; ``None`` sends none; ``"auto"`` (default) uses the
            backend's ``preferred_system_prompt`` when it has one (``smollm2``: none, its template's own),
            else :data:`DEFAULT_ENV_SYSTEM_PROMPT`. ``info["env_system_prompt"]`` says which was used.
        backend_kwargs: extra keyword arguments when ``env_llm`` is a spec string.
        default_model, model_prices, cost_weight, cost_reference_usd: for several env LLMs (opt-in, see
            docs/cost-aware.md): ``env_llm={"cheap": spec, "strong": spec}`` names them; the agent picks one per call
            (``[strong] ...`` in a plain-text prompt, ``"model": "strong"`` in a JSON call's arguments; none: the
            ``default_model``, else the first; an unknown name gets an error reply). Each keeps its own history;
            ``model_prices`` (``{name: (USD per 1k input tokens, per 1k output tokens)}``) prices their calls (a model
            without one: its backend's own cost); the agent's system text lists them. ``reward_variant="cost_aware"``
            subtracts ``cost_weight x dollars`` (divided by ``cost_reference_usd`` when set) from the total.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(
        self,
        task: Any = "synthetic",
        env_llm: str | LLMBackend | Mapping[str, str | LLMBackend] = "sim",
        *,
        settings: EpisodeSettings | None = None,
        split: str = "train",
        task_order: str = "random",
        sampling: Mapping[str, Any] | None = None,
        env_system_prompt: str | None = "auto",
        render_mode: str | None = None,
        backend_kwargs: Mapping[str, Any] | None = None,
        default_model: str | None = None,
        model_prices: Mapping[str, Sequence[float]] | None = None,
        max_action_chars: int = 16_384,
        max_observation_chars: int = 262_144,
        **episode: Any,
    ) -> None:
        # The episode's settings (max_turns, max_response_chars, reward_variant, answer_metric, framing, env_history,
        # agent_system_prompt, agent_tool_description, cost_weight, cost_reference_usd) are EpisodeSettings fields:
        # declared, defaulted and checked there once; `settings` gives them as a group, keywords change them.
        try:
            s = EpisodeSettings.pick(settings, **episode) if settings is not None else EpisodeSettings(**episode)
        except TypeError:
            names = sorted({f.name for f in dataclasses.fields(EpisodeSettings)})
            unknown = sorted(set(episode) - set(names))
            raise TypeError(did_you_mean("PromptCollabEnv keyword argument", unknown[0] if unknown else episode,
                                         names + ["split", "task_order", "sampling", "env_system_prompt",
                                                  "render_mode", "backend_kwargs", "default_model", "model_prices",
                                                  "max_action_chars", "max_observation_chars", "settings"])) from None
        self.settings = s
        if isinstance(max_action_chars, bool) or not isinstance(max_action_chars, int) or max_action_chars < 1:
            raise ValueError(f"max_action_chars must be a whole number >= 1, got {max_action_chars!r}.")
        if task_order not in ("random", "sequential"):
            raise ValueError(f"task_order must be 'random' or 'sequential', got {task_order!r}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}.")
        # Validate the reward options now rather than at the end of the first episode (did-you-mean errors).
        REWARD_VARIANTS[s.reward_variant]
        if s.answer_metric != "auto":
            ANSWER_METRICS[s.answer_metric]

        self.tasks = load_tasks(task, split=split)
        if len(self.tasks) == 0:
            raise ValueError(f"task source {task!r} holds no tasks.")
        # Several env LLMs (opt-in): {"cheap": spec or backend, "strong": ...}; the agent names one per call
        self.env_llms: dict[str, LLMBackend] = {}
        if isinstance(env_llm, Mapping):
            if not env_llm:
                raise ValueError("env_llm as a mapping needs at least one entry, e.g. {'cheap': 'sim', 'strong': ...}.")
            for k in env_llm:  # the agent is told to name a model as [name]: every name must be writable
                check_model_name(k, what="env_llm mapping: the model name")
            self.env_llms = {str(k): make_backend(v, **dict(backend_kwargs or {})) for k, v in env_llm.items()}
            default_model = default_model or next(iter(self.env_llms))
            if default_model not in self.env_llms:
                raise ValueError(f"default_model {default_model!r} is not one of the env LLMs {sorted(self.env_llms)}.")
            self.env_llm: LLMBackend = self.env_llms[default_model]
        else:
            if default_model is not None or model_prices:
                raise ValueError("default_model and model_prices are for several env LLMs: pass env_llm as a mapping "
                                 "{'cheap': spec, 'strong': spec}.")
            self.env_llm = make_backend(env_llm, **dict(backend_kwargs or {}))
        self.default_model = default_model
        self.model_prices = check_prices(model_prices)  # finite and >= 0: a negative price pays for calling
        unknown = sorted(set(self.model_prices) - set(self.env_llms))
        if unknown:
            raise ValueError(f"model_prices names {unknown}, which are not env LLMs ({sorted(self.env_llms)}).")
        if s.reward_variant in COST_AWARE_VARIANTS:
            cost_penalty(0.0, s.cost_weight, s.cost_reference_usd)  # the settings are checked now
        self.cost_weight = float(s.cost_weight)
        self.cost_reference_usd = s.cost_reference_usd
        self.max_turns = s.max_turns
        self.max_response_chars = s.max_response_chars
        self.max_action_chars = max_action_chars
        self.max_observation_chars = max_observation_chars
        self.env_history = s.env_history
        self.reward_variant = s.reward_variant
        self.answer_metric = s.answer_metric
        self.task_order = task_order
        self.sampling = dict(sampling or {})
        if env_system_prompt == "auto":
            env_system_prompt = getattr(self.env_llm, "preferred_system_prompt", DEFAULT_ENV_SYSTEM_PROMPT)
        if env_system_prompt is not None and not isinstance(env_system_prompt, str):
            raise TypeError(f"env_system_prompt must be a string, None (no system message) or 'auto'; "
                            f"got {type(env_system_prompt).__name__}.")
        self.env_system_prompt = env_system_prompt
        self.framing: Framing = FRAMINGS.get(s.framing)
        text = s.agent_system_prompt  # "": the framing's own; None: no system message (ours)
        if self.framing.name.startswith("reference") and text in ("", DEFAULT_AGENT_SYSTEM_PROMPT):
            text = None  # the reference framing's own system message (with the tool schema)
        elif text == "":
            text = DEFAULT_AGENT_SYSTEM_PROMPT
        self.agent_system_prompt = self.framing.agent_system_prompt(text, s.agent_tool_description or None)
        if self.env_llms:
            self.agent_system_prompt = "\n\n".join(p for p in (self.agent_system_prompt, self.models_note()) if p)
        self.render_mode = render_mode

        self.observation_space = UnicodeText(max_observation_chars)
        self.action_space = UnicodeText(max_action_chars)

        self._cursor = 0
        self._clear_episode()

    @classmethod
    def from_settings(cls, task: Any, env_llm: Any, settings: Any, **extra: Any) -> PromptCollabEnv:
        """The env a run's settings describe: their :class:`~promptr1.core.settings.EpisodeSettings` group as it is,
        the env LLM's sampling and system message, and with ``env_models`` the models' default and prices (then
        ``env_llm`` is the mapping of backends). ``extra``: other keyword arguments (``split``, ...)."""
        return cls(task=task, env_llm=env_llm, settings=EpisodeSettings.pick(settings),
                   **{**cls._backend_kwargs(settings), **extra})

    @staticmethod
    def settings_kwargs(settings: Any) -> dict[str, Any]:
        """The same as keyword arguments (the TRL rollout and dataset take them): every field of the episode group,
        and the env-LLM ones of :meth:`from_settings`."""
        episode = dataclasses.asdict(EpisodeSettings.pick(settings))
        return {**episode, **PromptCollabEnv._backend_kwargs(settings)}

    @staticmethod
    def _backend_kwargs(settings: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"sampling": settings.env_sampling(), "env_system_prompt": settings.env_system_prompt}
        if settings.env_models:
            _, prices = settings.env_models_map()
            kwargs.update(default_model=settings.env_default_model or None, model_prices=prices)
        return kwargs

    # ------------------------------------------------------------------ episode state
    def _clear_episode(self) -> None:
        self.task: Task | None = None
        self.turns: list[str] = []  # the agent's turns, as given (after length truncation)
        self.messages: list[dict[str, str]] = []  # the agent's chat: system?, user, assistant, user, ...
        self.llm_history: list[dict[str, str]] = []  # what the (default) env LLM has seen: prompts and its replies
        self.llm_histories: dict[str, list[dict[str, str]]] = {}  # with several env LLMs: each one's own history
        self.done = True
        self.env_error: str | None = None
        self.last_reward_components: dict[str, Any] | None = None
        self._turn_limit = self.max_turns  # the last turn of this episode (see _time_limit_of)
        self.episode_stats = {"env_llm_calls": 0, "env_llm_latency_s": 0.0, "env_llm_tokens": 0,
                              "env_llm_attempts": 0, "env_llm_cost_usd": 0.0}
        if getattr(self, "env_llms", None):
            self.llm_histories = {name: [] for name in self.env_llms}
            self.llm_history = self.llm_histories[self.default_model]
            self.episode_stats["calls_by_model"] = {name: 0 for name in self.env_llms}
            self.episode_stats["cost_by_model"] = {name: 0.0 for name in self.env_llms}

    @property
    def turn(self) -> int:
        """Agent turns taken in this episode."""
        return len(self.turns)

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode on a task; returns the agent's first prompt.

        ``options`` may hold ``task`` (a :class:`Task`) or ``task_index`` (an int).
        """
        super().reset(seed=seed)
        options = dict(options or {})
        self._clear_episode()
        limit = _time_limit_of(self)
        self._turn_limit = min(self.max_turns, limit) if limit else self.max_turns
        if "task" in options:
            task = options["task"]
            if not isinstance(task, Task):
                raise TypeError(f"options['task'] must be a promptr1 Task, got {type(task).__name__}.")
        elif "task_index" in options:
            idx = int(options["task_index"])
            if not 0 <= idx < len(self.tasks):
                raise IndexError(f"options['task_index']={idx} is out of range; the task source has {len(self.tasks)} tasks.")
            task = self.tasks[idx]
        elif self.task_order == "sequential":
            task = self.tasks[self._cursor % len(self.tasks)]
            self._cursor += 1
        else:
            task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        self.task = task
        self.done = False
        if self.agent_system_prompt:
            self.messages.append({"role": "system", "content": self.agent_system_prompt})
        self.messages.append({"role": "user", "content": task.prompt})
        obs = "\n\n".join(m["content"] for m in self.messages)
        info = {
            "task_id": task.id,
            "data_source": task.data_source,
            "ability": task.ability,
            "turn": 0,
            "messages": [dict(m) for m in self.messages],
        }
        return self._fit_obs(obs), info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Play one agent turn (see the module docstring)."""
        pending = self._begin(action)
        if isinstance(pending, tuple):
            return pending
        try:
            completion = self._backend(pending).complete(pending.messages, **self.sampling)
        except EnvLLMError as exc:
            return self._finish(pending, None, exc)
        except Exception as exc:  # a backend bug must not crash a training run; flag the episode
            return self._finish(pending, None, EnvLLMError(f"{type(exc).__name__}: {exc}", kind="error"))
        return self._finish(pending, completion, None)

    async def astep(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Async twin of :meth:`step`: awaits the env LLM instead of blocking."""
        pending = self._begin(action)
        if isinstance(pending, tuple):
            return pending
        try:
            completion = await self._backend(pending).acomplete(pending.messages, **self.sampling)
        except EnvLLMError as exc:
            return self._finish(pending, None, exc)
        except Exception as exc:
            return self._finish(pending, None, EnvLLMError(f"{type(exc).__name__}: {exc}", kind="error"))
        return self._finish(pending, completion, None)

    def render(self) -> str | None:
        text = self.transcript()
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        for backend in (self.env_llms.values() if self.env_llms else [self.env_llm]):
            close = getattr(backend, "close", None)
            if callable(close):
                close()

    # ------------------------------------------------------------------ several env LLMs
    def models_note(self) -> str:
        """The line of the agent's system text that lists the env LLMs it may ask, their prices, and how to name one."""
        parts = []
        for name in self.env_llms:
            price = self.model_prices.get(name)
            shown = f"${price[0]:g} / ${price[1]:g} per 1,000 input / output tokens" if price else "its own price"
            parts.append(f"{name} ({shown}{'; the default' if name == self.default_model else ''})")
        how = ('add "model": NAME to the call\'s arguments' if self.framing.name.startswith("reference")
               else "start the request with the model's name in brackets, e.g. [" + next(iter(self.env_llms)) + "]")
        return f"Large models you can ask: {', '.join(parts)}. To choose one, {how}."

    def _history(self, target: str | None) -> list[dict[str, str]]:
        """What the env LLM ``target`` (None: the only one) has seen of this episode."""
        return self.llm_histories[target] if target else self.llm_history

    def _backend(self, pending: _Pending) -> LLMBackend:
        return self.env_llms[pending.target] if pending.target else self.env_llm

    def _call_cost(self, target: str | None, result: Completion | EnvLLMError) -> float:
        """Dollars of one call, a reply or a failure: from ``model_prices`` when the model has one, else the
        backend's own accounting (:func:`~promptr1.llm_backends.pricing.call_cost`, as the budget counts
        it)."""
        return call_cost(result, self.model_prices.get(target or ""))

    # ------------------------------------------------------------------ the turn logic
    def _begin(self, action: Any):
        """Parse a turn; return a finished step tuple, or a :class:`_Pending` LLM call."""
        if self.done:
            raise RuntimeError(
                "step() called on a finished episode (or before reset()). Call env.reset() to start a new episode."
            )
        if isinstance(action, bytes):
            action = action.decode("utf-8", errors="replace")
        if not isinstance(action, str):
            raise TypeError(f"action must be the agent's turn as a str, got {type(action).__name__}.")
        truncated_action = len(action) > self.max_action_chars
        if truncated_action:
            action = action[: self.max_action_chars]
        try:
            action, parsed, refusal, target = self._read_turn(action)
        except Exception as exc:  # noqa: BLE001 -- text the run does not control never crashes a step
            # A parser that fails on some agent text (today's known case, JSON nested too deep, is refused by the
            # framing's check): the turn is a malformed call, refused with an error reply like any other.
            log.warning("an agent turn could not be read (%s); refused as a malformed call", type(exc).__name__)
            action = self._with_prefill(action)
            parsed, refusal, target = ParsedTurn("prompt"), f"Error: unreadable call ({type(exc).__name__})", None
        self.turns.append(action)
        self.messages.append({"role": "assistant", "content": action})
        if refusal is not None:  # a malformed call: an error message comes back, the large LLM is not called
            if target is None:  # refused by the framing (not a model name the env lacks): the reference records it
                self._record_history(action, None, None)
            return self._finish(_Pending([], parsed, truncated_action), Completion(text=""), None, called=False,
                                obs=self.framing.error_reply(refusal))
        if parsed.kind != "prompt":  # an answer, or a turn with neither tag: the episode ends here
            return self._end(parsed, terminated=True, truncated=False, action_truncated=truncated_action)
        if not parsed.prompt and not self.framing.name.startswith("reference"):
            # an empty request: nothing to send; the LLM's answer to nothing is nothing (the reference framings send
            # the empty user message and return the reply, as the reference does)
            return self._finish(_Pending([], parsed, truncated_action), Completion(text=""), None, called=False)
        system = [] if self.env_system_prompt is None else [{"role": "system", "content": self.env_system_prompt}]
        history = self._history(target)
        messages = [*system, *history, {"role": "user", "content": parsed.prompt}]
        return _Pending(messages, parsed, truncated_action, target)

    def _with_prefill(self, action: str) -> str:
        """The turn with the framing's prefilled opening (every turn after the first; part of the scored turn)."""
        if self.framing.turn_prefill and self.turns and not action.startswith(self.framing.turn_prefill):
            return self.framing.turn_prefill + action
        return action

    def _read_turn(self, action: str) -> tuple[str, ParsedTurn, str | None, str | None]:
        """Every parse of the agent's text, in one place (:meth:`_begin` guards it): the turn as recorded, what it
        asks for, the error reply of a refused call (``None``: not refused) and the env LLM it names (for a refused
        call, the unknown name it gave, or ``None`` when the framing refused it)."""
        action = self._with_prefill(self.framing.preprocess_action(action))
        parsed = parse_turn(action)
        if parsed.kind != "prompt":
            return action, parsed, None, None
        prompt, refusal = self.framing.check_call(parsed.inner or "")
        if refusal is not None:
            return action, parsed, refusal, None
        parsed = dataclasses.replace(parsed, prompt=prompt)
        target = None
        if self.env_llms:
            target, prompt = call_target(parsed.inner or "", parsed.prompt or "")
            target = target or self.default_model
            if target not in self.env_llms:  # a name the env does not have: an error reply, never an exception
                return action, parsed, f"Error: unknown model {target!r}; the models are {', '.join(self.env_llms)}", target
            parsed = dataclasses.replace(parsed, prompt=prompt)
        return action, parsed, None, target

    def _finish(self, pending: _Pending, completion: Completion | None, error: EnvLLMError | None, *,
                called: bool = True, obs: str | None = None):
        if called:
            self.episode_stats["env_llm_calls"] += 1
        if error is not None:
            cost = self._call_cost(pending.target, error) if called else 0.0
            if called and pending.target:
                self.episode_stats["calls_by_model"][pending.target] += 1
                self.episode_stats["cost_by_model"][pending.target] += cost
            self.episode_stats["env_llm_cost_usd"] += cost
            self.env_error = f"{error.kind}: {error}"
            self.episode_stats["env_llm_attempts"] += getattr(error, "attempts", 1)
            return self._end(pending.parsed, terminated=False, truncated=True,
                             action_truncated=pending.action_truncated)
        assert completion is not None
        reply = completion.text
        if called:
            self._record_history(self.turns[-1], pending, reply)
            self.episode_stats["env_llm_latency_s"] += completion.latency_s
            self.episode_stats["env_llm_tokens"] += completion.prompt_tokens + completion.completion_tokens
            self.episode_stats["env_llm_attempts"] += completion.attempts
            cost = self._call_cost(pending.target, completion)
            self.episode_stats["env_llm_cost_usd"] += cost
            if pending.target:
                self.episode_stats["calls_by_model"][pending.target] += 1
                self.episode_stats["cost_by_model"][pending.target] += cost
        if obs is None:
            obs = self.framing.wrap_reply(reply, self.max_response_chars)
        if self.turn >= self._turn_limit:
            return self._end(pending.parsed, terminated=False, truncated=True,
                             action_truncated=pending.action_truncated, completion=completion, out_of_turns=True)
        self.messages.append({"role": "user", "content": obs})
        info = self._info(pending.parsed, pending.action_truncated, completion,
                          turn_prefill=self.framing.turn_prefill)  # what the agent's next turn opens with
        return self._fit_obs(obs), 0.0, False, False, info

    def _record_history(self, action: str, pending: _Pending | None, reply: str | None) -> None:
        """Add a call to the env LLM's history: ``pending``/``reply`` for a call made, None for a refused one.

        Our modes record calls made, as ``(prompt, reply kept by env_history)``. The reference's: under the
        ``reference-eval`` framing every call that reached the env, refused ones included (with an empty reply), as
        its evaluation does; under the ``reference`` framing with ``env_history: reference`` every call whose JSON
        carries a non-empty ``arguments.prompt``, as its training does (:func:`reference_history_prompt`).
        """
        history = self._history(pending.target if pending else None)
        evaluation = self.framing.name == "reference-eval"
        if evaluation or (self.framing.name == "reference" and self.env_history == "reference"):
            prompt = reference_history_prompt(action, evaluation=evaluation)
        elif pending is None:
            return
        else:
            prompt = pending.parsed.prompt or ""
        if prompt is None:
            return
        history.append({"role": "user", "content": prompt})
        history.append({"role": "assistant", "content": "" if reply is None else self._history_reply(reply)})

    def end_at_length_limit(self, *, cut_turn: bool) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """End the episode because the agent's context is full (the player's ``max_seq_len``), scored as the reference
        scores its length-cut stream (the step's 5-tuple, truncated).

        ``cut_turn=False``: the context filled up after a reply, so the next turn's ``<think>\n`` prefill is the last
        block, as when out of turns: every prompt turn is intermediate (``-1 + min(0.4 k, 1)`` under the faithful
        reward). ``cut_turn=True``: the last agent turn was cut by the limit; that cut turn is the last block.
        """
        if self.task is None or not self.turns:
            raise RuntimeError("end_at_length_limit() needs an episode with at least one agent turn; call reset() "
                               "and step() first.")
        return self._end(parse_turn(self.turns[-1]), terminated=False, truncated=True, action_truncated=False,
                         out_of_turns=not cut_turn)

    def _history_reply(self, reply: str) -> str:
        """What the env LLM's history keeps of ``reply`` (``env_history``)."""
        if self.env_history == "full":
            return reply
        if self.env_history == "reference":
            return reference_history_reply(reply, self.max_response_chars)
        return self.framing.seen_reply(reply, self.max_response_chars)

    def _end(self, parsed: ParsedTurn, *, terminated: bool, truncated: bool, action_truncated: bool,
             completion: Completion | None = None, out_of_turns: bool = False):
        self.done = True
        assert self.task is not None
        blocks = list(self.turns)
        if out_of_turns:
            # As in the reference: after the last reply the next assistant turn opens with its prefilled
            # "<think>\n" and the episode ends there, so that lone prefill is the last scored block and every
            # prompt turn counts as intermediate (three good prompts reach the format cap: reward 0).
            blocks.append(REFERENCE_TURN_PREFILL)
        breakdown = compute_reward(blocks, self.task.answers, variant=self.reward_variant,
                                   answer_metric=answer_metric_for(self.answer_metric, self.task.ability))
        self.last_reward_components = breakdown.as_dict()
        total = float(breakdown.total)
        if self.reward_variant in COST_AWARE_VARIANTS:
            spent = float(self.episode_stats["env_llm_cost_usd"])
            penalty = cost_penalty(spent, self.cost_weight, self.cost_reference_usd)
            total -= penalty
            self.last_reward_components.update(total=total, cost_usd=spent, cost_penalty=penalty)
        info = self._info(parsed, action_truncated, completion, reward_components=self.last_reward_components,
                          episode={"r": total, "l": self.turn, **self.episode_stats})
        return "", total, terminated, truncated, info

    def _info(self, parsed: ParsedTurn, action_truncated: bool, completion: Completion | None,
              **fields: Any) -> dict[str, Any]:
        """The step's record in its dict form (:class:`StepInfo`); ``fields`` sets the end-of-episode or next-turn
        fields."""
        return StepInfo.info_of(
            task_id=self.task.id if self.task else "",
            turn=self.turn,
            turn_kind=parsed.kind,
            parsed_prompt=parsed.prompt,
            answer=parsed.answer,
            tool_call=parsed.tool_call,
            action_truncated=action_truncated,
            env_error=self.env_error,
            env_llm_latency_s=completion.latency_s if completion else 0.0,
            env_llm_tokens=(completion.prompt_tokens + completion.completion_tokens) if completion else 0,
            env_llm_attempts=completion.attempts if completion else 0,
            env_llm_cached=bool(completion.cached) if completion else False,
            env_system_prompt=self.env_system_prompt,
            **fields,
        )

    def _fit_obs(self, obs: str) -> str:
        return obs if len(obs) <= self.max_observation_chars else obs[: self.max_observation_chars]

    # ------------------------------------------------------------------ views
    def transcript(self) -> str:
        """The episode so far as readable text (what ``render()`` shows)."""
        if self.task is None:
            return "(no episode: call reset())"
        lines = [f"=== task {self.task.id or '?'} ({self.task.data_source or self.task.ability}) ===",
                 f"[question] {self.task.question}"]
        for m in self.messages[1:] if self.agent_system_prompt else self.messages:
            if m["role"] == "user" and m["content"] == self.task.prompt:
                continue
            tag = "agent" if m["role"] == "assistant" else "env LLM"
            lines.append(f"[{tag}] {m['content']}")
        if self.done:
            if self.env_error:
                lines.append(f"[env error] {self.env_error}")
            if self.last_reward_components is not None:
                rc = self.last_reward_components
                lines.append(f"[reward] total={rc['total']:+.3f} format={rc['format']:.2f} answer={rc['answer']:.3f}")
            lines.append(f"[gold] {' | '.join(self.task.answers)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"PromptCollabEnv(tasks={len(self.tasks)}, env_llm={getattr(self.env_llm, 'name', '?')!r}, "
                f"max_turns={self.max_turns})")


def _time_limit_of(env: PromptCollabEnv) -> int | None:
    """The step limit of a gymnasium ``TimeLimit`` wrapping ``env`` (``gym.make("PromptR1-v0",
    max_episode_steps=N)``), found among the callers of ``env.reset``; ``None`` when there is none.

    That wrapper cuts an episode after N steps from the outside, on a turn the env treated as intermediate
    (reward 0, no ``reward_components``). The env reads the limit when an episode starts and ends its N-th
    turn itself, scored as a turn at ``max_turns`` is. Only the wrapper's own attribute is read; nothing is
    changed.
    """
    import sys

    frame = sys._getframe(2)  # reset's caller: the wrapper chain starts there
    for _ in range(16):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, gym.Wrapper) and owner.unwrapped is env:
            limit = getattr(owner, "_max_episode_steps", None)
            if isinstance(limit, int) and limit > 0:
                return limit
        elif owner is not None and owner is not env:
            return None  # past the wrappers: a caller of the outermost one
        frame = frame.f_back
    return None
