"""Agents under evaluation: a model played through the rollout's sampler, or a text-level policy.

:class:`ModelPolicy` is how a language model is evaluated: its episodes are played by
:func:`promptr1.agents.rollout.arun_episodes`, the very function that plays training rollouts,
with the same :class:`~promptr1.agents.rollout.ChatFramer`, the same stop strings
(:data:`~promptr1.agents.rollout.DEFAULT_STOP_STRINGS`) and the same KV-cached sampler, so an
evaluated agent plays exactly as it did in training. Build one from a model name
(:meth:`ModelPolicy.load`: ``smollm2``, ``tiny``, an HF id or folder, a training run folder, all
through :func:`promptr1.agents.models.load_policy`) or from a model and tokenizer already in
memory (the trainer's live model). Neither path changes the tokenizer (the sampler pads by hand)
nor the model's dtype.

:class:`AgentPolicy` is the text-level protocol for agents that are not language models
(``act(chats) -> turns``); :class:`TextPolicyPlayer` plays one through the same environment.
Both kinds meet in one interface, :class:`EpisodePlayer`: ``await player.aplay(envs, tasks,
seed=...)`` returns finished :class:`~promptr1.agents.rollout.Episode` objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from promptr1.agents.episode import Episode, env_step, record_step, start_episode
from promptr1.agents.rollout import ChatFramer, RolloutConfig, arun_episodes, rollout_config

__all__ = [
    "AgentPolicy",
    "EpisodePlayer",
    "ModelPolicy",
    "TextPolicyPlayer",
    "as_player",
    "rollout_config",
]


@runtime_checkable
class AgentPolicy(Protocol):
    """Writes the agent's next turn for each chat (role/content dicts, as in ``info["messages"]``)."""

    def act(self, batch_of_chats: list[list[dict[str, str]]]) -> list[str]: ...


@runtime_checkable
class EpisodePlayer(Protocol):
    """Plays one episode per ``(env, task)`` pair to its end (``envs[i]`` reset with ``tasks[i]``)."""

    async def aplay(self, envs: Sequence[Any], tasks: Sequence[Any], *, seed: int | None = None) -> list[Episode]: ...


class ModelPolicy:
    """A causal LM and its tokenizer, played through the rollout's sampler.

    ``rollout`` sets the decoding (default :class:`RolloutConfig()`: the training defaults;
    ``temperature=0`` decodes greedily). ``seed`` seeds the sampling generator.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str | None = None,
        rollout: RolloutConfig | None = None,
        seed: int = 0,
    ) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.framer = ChatFramer(tokenizer)  # fails early on a template that cannot be spliced
        self.rollout = rollout if rollout is not None else RolloutConfig()
        self.name = name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
        self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def load(
        cls,
        name: str,
        *,
        rollout: RolloutConfig | None = None,
        device: str | None = None,
        seed: int = 0,
        dtype: str = "auto",
    ) -> ModelPolicy:
        """Load ``name`` with :func:`promptr1.agents.models.load_policy` (the one model resolver) onto
        ``device`` (default: CUDA when available, else the CPU), in evaluation mode, in ``dtype`` (``auto``: bf16
        on a GPU that supports it, else float32)."""
        import torch

        from promptr1.agents.models import load_policy

        model, tokenizer = load_policy(name, dtype="fp32" if device == "cpu" and dtype == "auto" else dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        return cls(model, tokenizer, name=name, rollout=rollout, seed=seed)

    async def aplay(self, envs: Sequence[Any], tasks: Sequence[Any], *, seed: int | None = None) -> list[Episode]:
        """Play the episodes with :func:`~promptr1.agents.rollout.arun_episodes` (token in, token out)."""
        return await arun_episodes(self.model, self.tokenizer, envs, tasks, list(range(len(envs))), self.rollout,
                                   framer=self.framer, generator=self.generator, seed=seed)

    def play(self, envs: Sequence[Any], tasks: Sequence[Any], *, seed: int | None = None) -> list[Episode]:
        """Synchronous :meth:`aplay` (not from inside a running event loop)."""
        return asyncio.run(self.aplay(envs, tasks, seed=seed))

    def __repr__(self) -> str:
        return f"ModelPolicy({self.name!r}, temperature={self.rollout.temperature})"


class TextPolicyPlayer:
    """Plays an :class:`AgentPolicy` (text in, text out): episodes advance independently, and the
    policy is asked for the turns of up to ``batch_size`` waiting episodes at once while the other
    episodes' env-LLM calls are in flight."""

    def __init__(self, policy: AgentPolicy, *, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
        self.policy = policy
        self.batch_size = batch_size

    async def aplay(self, envs: Sequence[Any], tasks: Sequence[Any], *, seed: int | None = None,
                    listener: Any = None) -> list[Episode]:
        """Play the episodes. A policy with an ``aact`` coroutine (same contract as ``act``) is awaited on the event
        loop; ``act`` runs in a worker thread. ``listener(event, episode, text)`` hears each ``"turn"`` (before its
        env call) and each ``"step"`` (the reply recorded, or the episode ended), as in
        :func:`~promptr1.agents.rollout.arun_episodes`."""
        if len(envs) != len(tasks):
            raise ValueError(f"envs and tasks must have equal lengths, got {len(envs)} and {len(tasks)}.")
        episodes = [start_episode(env, task, group=i, seed=None if seed is None else seed + i)
                    for i, (env, task) in enumerate(zip(envs, tasks))]

        async def step(k: int, action: str) -> tuple[int, str, tuple]:
            return k, action, await env_step(envs[k], action)

        ready = list(range(len(episodes)))
        pending: set[asyncio.Future] = set()
        try:
            await self._loop(episodes, ready, pending, step, listener)
        finally:  # cancelled (a caller's deadline): no env call outlives the episodes
            for fut in pending:
                fut.cancel()
        return episodes

    async def _loop(self, episodes: list[Episode], ready: list[int], pending: set[asyncio.Future], step: Any,
                    listener: Any) -> None:
        while ready or pending:
            while ready:
                batch, ready = ready[: self.batch_size], ready[self.batch_size :]
                chats = [[dict(m) for m in episodes[k].messages] for k in batch]
                aact = getattr(self.policy, "aact", None)
                actions = await aact(chats) if aact is not None else await asyncio.to_thread(self.policy.act, chats)
                if len(actions) != len(batch):
                    raise ValueError(f"AgentPolicy.act returned {len(actions)} turns for {len(batch)} chats.")
                for k, a in zip(batch, actions):
                    if listener is not None:
                        listener("turn", episodes[k], a)
                    pending.add(asyncio.ensure_future(step(k, a)))
            if pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending -= done  # in place: the caller cancels what is left
                for fut in sorted(done, key=lambda f: f.result()[0]):
                    k, action, result = fut.result()
                    more = record_step(episodes[k], action, result)
                    if listener is not None:
                        listener("step", episodes[k], "")
                    if more:
                        ready.append(k)


def as_player(agent: Any, *, rollout: RolloutConfig | None = None, batch_size: int = 8, seed: int = 0,
              name: str | None = None) -> EpisodePlayer:
    """An :class:`EpisodePlayer` for ``agent``: a :class:`ModelPolicy` or any player as is, a
    ``(model, tokenizer)`` pair as a :class:`ModelPolicy` with ``rollout``, an :class:`AgentPolicy`
    in a :class:`TextPolicyPlayer`."""
    if isinstance(agent, EpisodePlayer):
        return agent
    if isinstance(agent, tuple) and len(agent) == 2:
        return ModelPolicy(agent[0], agent[1], name=name, rollout=rollout, seed=seed)
    if isinstance(agent, AgentPolicy):
        return TextPolicyPlayer(agent, batch_size=batch_size)
    raise TypeError(
        f"an agent must be a ModelPolicy, a (model, tokenizer) pair, or an object with act(chats) -> turns; "
        f"got {type(agent).__name__}."
    )
