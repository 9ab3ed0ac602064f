"""What one step of :class:`~promptr1.envs.collab_env.PromptCollabEnv` reports, as one typed record.

The environment builds a :class:`StepInfo` for every step and hands Gymnasium users its :meth:`StepInfo.to_info`
dict (the keys documented in the README); library code reads steps back through :meth:`StepInfo.from_info`
instead of indexing string keys, so a key is named in one place only. The dict form is what crosses wrappers,
vector envs and process boundaries.

>>> s = StepInfo(turn=1, turn_kind="prompt", parsed_prompt="Where is X?", turn_prefill="<think>\\n")
>>> StepInfo.from_info(s.to_info()) == s
True
>>> StepInfo.from_info({"turn": 2, "env_error": "timeout: slow"}).env_error
'timeout: slow'
>>> info = StepInfo(turn=3, extra={"strategy": "split"}).to_info()
>>> info["strategy"], "extra" in info, "reward_components" in info
('split', False, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StepInfo"]


@dataclass(frozen=True)
class StepInfo:
    """One step's report. ``reward_components`` and ``episode`` are set on the step that ends the episode only;
    ``turn_prefill`` on the steps that do not."""

    task_id: str = ""
    turn: int = 0
    """Agent turns taken so far in the episode (this one included)."""
    turn_kind: str = ""
    """``prompt``, ``answer`` or ``none`` (:func:`promptr1.envs.protocol.parse_turn`)."""
    parsed_prompt: str | None = None
    answer: str | None = None
    tool_call: Any = None
    action_truncated: bool = False
    env_error: str | None = None
    """``"kind: message"`` when the env LLM failed after its retries (the episode is truncated), else None."""
    env_llm_latency_s: float = 0.0
    env_llm_tokens: int = 0
    env_llm_attempts: int = 0
    env_llm_cached: bool = False
    env_system_prompt: str | None = None
    turn_prefill: str | None = None
    """What the agent's next turn opens with (the framing's prefill; already in the context)."""
    reward_components: Mapping[str, Any] | None = None
    episode: Mapping[str, Any] | None = None
    """The episode's summary: ``r`` (reward), ``l`` (turns) and the env-LLM totals (``env_llm_calls`` ...)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys a wrapper added to the dict form (kept when read back)."""

    def to_info(self) -> dict[str, Any]:
        """The Gymnasium ``info`` dict: every field but ``extra`` (whose keys are merged in); the end-of-episode
        and next-turn fields only where they apply."""
        out = self.__dict__.copy()  # every field, in declaration order (a plain dataclass: no __slots__)
        del out["extra"]
        for name in _OPTIONAL:
            value = out[name]
            if value is None:
                del out[name]
            elif isinstance(value, Mapping):
                out[name] = dict(value)
        if self.extra:
            out.update(self.extra)
        return out

    @staticmethod
    def info_of(**fields: Any) -> dict[str, Any]:
        """``StepInfo(**fields).to_info()`` without building the record: the environment's hot path.

        >>> StepInfo.info_of(turn=2, turn_kind="answer") == StepInfo(turn=2, turn_kind="answer").to_info()
        True
        """
        if not fields.keys() <= _DEFAULTS.keys():
            raise TypeError(f"StepInfo has no field {sorted(fields.keys() - _DEFAULTS.keys())[0]!r}.")
        out = _DEFAULTS.copy()
        out.update(fields)
        for name in _OPTIONAL:
            value = out[name]
            if value is None:
                del out[name]
            elif type(value) is not dict and isinstance(value, Mapping):
                out[name] = dict(value)
        return out

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> StepInfo:
        """Read a step's ``info`` dict back (missing keys take their defaults; unknown ones go to ``extra``)."""
        known = {k: v for k, v in info.items() if k in _FIELDS}
        extra = {k: v for k, v in info.items() if k not in _FIELDS}
        return cls(**known, extra=extra)

    @property
    def done_fields(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(reward_components, episode)`` as plain dicts (empty when not set)."""
        return dict(self.reward_components or {}), dict(self.episode or {})


_OPTIONAL = ("turn_prefill", "reward_components", "episode")
_FIELDS = tuple(f.name for f in dataclasses.fields(StepInfo) if f.name != "extra")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(StepInfo) if f.name != "extra"}
