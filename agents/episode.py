"""The episode engine: how every path (the training rollout, SFT demonstrations, evaluation's text policies, the
TRL rollout and the verl agent loop) starts an episode, plays an env step and records it.

An :class:`Episode` holds the chat, and, for token-level players, the token ids with their action mask and the
sampler's log-probs. A player calls :func:`start_episode`, then for each agent turn:

1. adds the turn's agent tokens (``ep.add(ids, True, logps)``; token-level players only),
2. sends ``ep.prefill + text`` to the env (:func:`env_step`),
3. hands the result to :func:`record_step`, which appends the turn and the reply to the chat, frames and
   tokenizes the reply once (loss mask 0), ends the episode on termination, truncation or overflow, and says
   whether another turn follows.

A text-level player (no tokenizer) passes ``framer=None`` and gets the same chat, reward and components.
:func:`agent_turn` is step 1 for players that start from text (SFT demonstrations). Layout of a finished
episode's ``ids`` (``mask`` is 1 on agent tokens)::

    [system+user prompt, rendered by the template][agent turn 1][frame + env reply 1 + frame][agent turn 2]...
     mask 0                                        mask 1        mask 0                        mask 1
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from promptr1.envs.step_info import StepInfo

__all__ = ["OVERFLOW_REWARD", "TRUNCATED_REWARD_MODES", "Episode", "agent_turn", "ends_on_context", "env_step",
           "record_step", "start_episode", "training_reward"]

#: Reward given to an episode cut short because it outgrew ``max_seq_len`` (the lowest reward).
OVERFLOW_REWARD = -1.0

#: Values of the ``truncated_reward`` setting (see :func:`training_reward`).
TRUNCATED_REWARD_MODES = ("ours", "reference")


@dataclass
class Episode:
    """One multi-turn episode as tokens, with what the environment said about it."""

    task: Any
    group: int
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)  # 1 on agent tokens
    logp: list[float] = field(default_factory=list)  # sampler log-prob on agent tokens, 0 elsewhere
    prompt_len: int = 0
    messages: list[dict[str, str]] = field(default_factory=list)
    reward: float = 0.0
    components: dict[str, Any] = field(default_factory=dict)
    turns: int = 0
    done: bool = False
    terminated: bool = False
    truncated: bool = False
    overflow: bool = False
    env_error: str | None = None
    episode_stats: dict[str, Any] = field(default_factory=dict)
    gen_tokens: int = 0
    segments: list[tuple[list[int], bool]] = field(default_factory=list)
    """``(token_ids, is_agent)`` in order: the input of :func:`promptr1.agents.masks.build_action_mask`."""
    prefill: str = ""
    """Text the next agent turn opens with (the framing's prefill, already in ``ids`` as context)."""
    cache: Any = field(default=None, repr=False)
    """The KV cache of a prefix of ``ids`` kept between turns (``kv_reuse``); dropped when the episode ends."""
    last_step: StepInfo | None = field(default=None, repr=False)
    """The env's report of the last step played."""
    framing: Any = field(default=None, repr=False)
    """The env's :class:`~promptr1.envs.framing.Framing` (None: an env without one); it decides how a reply is
    spliced into ``ids``."""
    end_at_length_limit: Any = field(default=None, repr=False)
    """The env's :meth:`~promptr1.envs.collab_env.PromptCollabEnv.end_at_length_limit` (None: an env without one):
    how the reference framings score an episode that outgrew ``max_seq_len``."""
    cut_turn: bool = False
    """The episode outgrew ``max_seq_len`` inside an agent turn: its stream ends on agent tokens."""

    def add(self, ids: Sequence[int], is_agent: bool, logps: Sequence[float] | None = None) -> None:
        """Append a segment: agent tokens (with their sampler log-probs) or context tokens."""
        ids = list(ids)
        self.segments.append((ids, bool(is_agent)))
        self.ids += ids
        self.mask += [int(bool(is_agent))] * len(ids)
        self.logp += list(logps) if logps is not None else [0.0] * len(ids)

    @property
    def num_action_tokens(self) -> int:
        return int(sum(self.mask))


def ends_on_context(ep: Episode) -> bool:
    """True for an episode whose stream ends on context rather than on an agent turn: it ran out of turns
    (the last reply, and the reference's ``<think>\n`` prefill, follow the last agent turn) or outgrew
    ``max_seq_len`` after a reply. An episode cut inside an agent turn (``cut_turn``) ends on agent tokens, and an
    env-error episode is not counted (it leaves its group anyway)."""
    return bool(ep.done and ep.truncated and ep.env_error is None and not ep.cut_turn)


def training_reward(ep: Episode, mode: str = "ours") -> float:
    """The reward an episode trains on, under the ``truncated_reward`` setting (one rule for our trainer, the TRL
    rollout and the verl loop). ``ep.reward`` (the reward function's value, what reports show) is not changed.

    ``"ours"`` (default)
        ``ep.reward``: an episode that ran out of turns trains on its reward (``-1 + min(0.4 k, 1)`` for ``k``
        well-formed prompt turns under the faithful reward), one that overflowed on -1.
    ``"reference"``
        0.0 for an episode that :func:`ends_on_context`, else ``ep.reward``. The official trainer writes the score
        on the last response token and its GRPO sums ``reward * action_mask``, so such an episode, which ends on
        masked tokens, trains at 0 whatever the reward function says.

    >>> ep = Episode(task=None, group=0, reward=-0.2, done=True, truncated=True)
    >>> training_reward(ep), training_reward(ep, "reference")
    (-0.2, 0.0)
    """
    if mode not in TRUNCATED_REWARD_MODES:
        raise ValueError(f"truncated_reward must be one of {', '.join(TRUNCATED_REWARD_MODES)} ('ours': the reward "
                         f"function's value; 'reference': 0 for episodes ending on an env reply); got {mode!r}.")
    if mode == "reference" and ends_on_context(ep):
        return 0.0
    return float(ep.reward)


def _env_framing(env: Any) -> Any:
    for obj in (env, getattr(env, "unwrapped", None), getattr(env, "env", None)):
        framing = getattr(obj, "__dict__", {}).get("framing")
        if framing is not None and hasattr(framing, "stop_strings"):
            return framing
    return None


def _env_length_limit(env: Any) -> Any:
    for obj in (env, getattr(env, "unwrapped", None), getattr(env, "env", None)):
        end = getattr(obj, "end_at_length_limit", None)
        if callable(end):
            return end
    return None


def _reference_length_rule(ep: Episode) -> bool:
    """Whether an episode that outgrows ``max_seq_len`` is scored as the reference scores it (its framings)."""
    return ep.end_at_length_limit is not None and str(getattr(ep.framing, "name", "")).startswith("reference")


async def env_step(env: Any, action: str) -> tuple:
    """One env step without blocking the event loop: ``env.astep`` when the env has it, else ``env.step`` in a
    worker thread."""
    astep = getattr(env, "astep", None)
    if astep is not None:
        return await astep(action)
    return await asyncio.to_thread(env.step, action)


def start_episode(env: Any, task: Any, *, group: int = 0, seed: int | None = None, framer: Any = None,
                  max_seq_len: int | None = None) -> Episode:
    """Reset ``env`` on ``task`` and open the episode: the chat, and with a ``framer`` the prompt's token ids."""
    _, info = env.reset(seed=seed, options={"task": task})
    ep = Episode(task=task, group=int(group), framing=_env_framing(env), end_at_length_limit=_env_length_limit(env))
    ep.messages = [dict(m) for m in info["messages"]]
    if framer is not None:
        ep.add(framer.prompt_ids(_agent_view(ep)), False)
        ep.prompt_len = len(ep.ids)
        if max_seq_len is not None and ep.prompt_len >= max_seq_len:
            raise ValueError(
                f"the opening prompt of task {getattr(task, 'id', '?')!r} is {ep.prompt_len} tokens, not below "
                f"max_seq_len={max_seq_len}; raise max_seq_len."
            )
    return ep


def agent_turn(ep: Episode, turn: str, framer: Any) -> str:
    """Add a turn given as text (e.g. a demonstration) as agent tokens; return the text to send to the env.

    The framing's prefill is already in the context (the previous reply's frame ends with it), so a turn that
    starts with it contributes only the rest as agent tokens, exactly as a sampled turn would.
    """
    body = turn[len(ep.prefill):] if ep.prefill and turn.startswith(ep.prefill) else turn
    ep.add(framer.encode(body), True)
    return ep.prefill + body


def record_step(ep: Episode, text: str, result: tuple, *, framer: Any = None, ended_with_eos: bool = False,
                max_seq_len: int | None = None, max_new_tokens: int | None = None) -> bool:
    """Record the env's answer to the agent turn ``text`` (``result`` is ``env.step``'s 5-tuple); return True when
    another agent turn follows.

    The turn's agent tokens, if any, were added already. With a ``framer`` the reply is framed by the chat template
    (with the next turn's prefill) and tokenized once; when that would leave no room for another turn under
    ``max_seq_len``, or the turn itself filled it, the episode ends there (``overflow``): with
    :data:`OVERFLOW_REWARD` under our framing; under the reference framings with the reference's score of the cut
    stream (:meth:`~promptr1.envs.collab_env.PromptCollabEnv.end_at_length_limit`: ``-1 + min(0.4 k, 1)`` after a
    reply; a turn cut by the limit is the last block, and the episode trains on that score, ``cut_turn``). A framing
    with ``context_estimate_limit`` (``reference-eval``) also ends the episode there when the next prompt's
    characters / 4 + ``max_new_tokens`` exceed that limit, as the reference's evaluation estimates its context.
    """
    obs, reward, terminated, truncated, info = result
    step = StepInfo.from_info(info)
    ep.last_step = step
    ep.turns += 1
    history = ep.messages
    ep.messages = history + [{"role": "assistant", "content": text}]
    cut = framer is not None and max_seq_len is not None and len(ep.ids) >= max_seq_len
    if cut and not terminated and step.env_error is None and _reference_length_rule(ep):
        # the turn was cut by the length limit: its env reply (or the out-of-turns end) never enters the stream
        return _end_at_length_limit(ep, cut_turn=True)
    if terminated or truncated:
        ep.cache = None
        ep.done, ep.terminated, ep.truncated = True, bool(terminated), bool(truncated)
        ep.reward = float(reward)
        ep.components, ep.episode_stats = step.done_fields
        ep.env_error = step.env_error
        return False
    ep.prefill = str(step.turn_prefill or "")
    ep.messages.append({"role": "user", "content": obs})
    if framer is None:
        return True
    one_message = getattr(ep.framing, "one_message", False)
    over_estimate = False
    if one_message:
        # the whole conversation is re-sent each turn as one user message: the context is rebuilt, not extended
        view = _agent_view(ep)
        reply_ids = framer.prompt_ids(view)
        room = len(reply_ids) + 1
        limit = getattr(ep.framing, "context_estimate_limit", None)
        if limit and max_new_tokens is not None:
            over_estimate = sum(len(m["content"]) for m in view) // 4 + max_new_tokens > limit
    else:
        # the reference framing keeps the agent's end-of-turn token and the frame's own (doubled, as in its stream)
        keep_eos = getattr(ep.framing, "doubled_end_token", False)
        reply_ids = framer.encode(framer.reply_text(history, text, obs, ended_with_eos and not keep_eos) + ep.prefill)
        room = len(ep.ids) + len(reply_ids) + 1
    full = over_estimate or (max_seq_len is not None and room >= max_seq_len)
    if full and _reference_length_rule(ep):
        return _end_at_length_limit(ep, cut_turn=False)
    if full:
        # No room for another agent turn: end the episode here with the lowest reward.
        ep.cache = None
        ep.done, ep.truncated, ep.overflow = True, True, True
        ep.reward = OVERFLOW_REWARD
        ep.components = {"total": OVERFLOW_REWARD, "overflow": True}
        return False
    if one_message:
        ep.ids, ep.mask, ep.logp, ep.segments, ep.cache = [], [], [], [], None
    ep.add(reply_ids, False)
    return True


def _end_at_length_limit(ep: Episode, *, cut_turn: bool) -> bool:
    """End an episode that outgrew ``max_seq_len`` with the env's reference score of the cut stream."""
    _, reward, _, _, info = ep.end_at_length_limit(cut_turn=cut_turn)
    components, stats = StepInfo.from_info(info).done_fields
    ep.cache = None
    ep.done, ep.terminated, ep.truncated, ep.overflow, ep.cut_turn = True, False, True, True, cut_turn
    ep.reward = float(reward)
    ep.components = {**dict(components or {}), "overflow": True}
    ep.episode_stats = stats
    return False


def _agent_view(ep: Episode) -> list[dict[str, str]]:
    """The chat the agent model is given: the episode's chat, or the framing's rewrite of it."""
    view = getattr(ep.framing, "agent_view", None)
    return view(ep.messages) if view is not None else ep.messages
