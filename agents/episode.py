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

__all__ = ["OVERFLOW_REWARD", "Episode", "agent_turn", "env_step", "record_step", "start_episode"]

#: Reward given to an episode cut short because it outgrew ``max_seq_len`` (the lowest reward).
OVERFLOW_REWARD = -1.0


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
    ep = Episode(task=task, group=int(group))
    ep.messages = [dict(m) for m in info["messages"]]
    if framer is not None:
        ep.add(framer.prompt_ids(ep.messages), False)
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
                max_seq_len: int | None = None) -> bool:
    """Record the env's answer to the agent turn ``text`` (``result`` is ``env.step``'s 5-tuple); return True when
    another agent turn follows.

    The turn's agent tokens, if any, were added already. With a ``framer`` the reply is framed by the chat template
    (with the next turn's prefill) and tokenized once; when that would leave no room for another turn under
    ``max_seq_len``, the episode ends there with :data:`OVERFLOW_REWARD`.
    """
    obs, reward, terminated, truncated, info = result
    step = StepInfo.from_info(info)
    ep.last_step = step
    ep.turns += 1
    history = ep.messages
    ep.messages = history + [{"role": "assistant", "content": text}]
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
    reply_ids = framer.encode(framer.reply_text(history, text, obs, ended_with_eos) + ep.prefill)
    if max_seq_len is not None and len(ep.ids) + len(reply_ids) + 1 >= max_seq_len:
        # No room for another agent turn: end the episode here with the lowest reward.
        ep.cache = None
        ep.done, ep.truncated, ep.overflow = True, True, True
        ep.reward = OVERFLOW_REWARD
        ep.components = {"total": OVERFLOW_REWARD, "overflow": True}
        return False
    ep.add(reply_ids, False)
    return True
