"""The Prompt-R1 environment, its task sources and its wrappers."""

from __future__ import annotations

from typing import Any

__all__ = ["PromptCollabEnv", "Task", "load_tasks"]

from promptr1.envs.tasks import Task, load_tasks


def __getattr__(name: str) -> Any:  # lazy: importing the env pulls in the reward and backends
    if name == "PromptCollabEnv":
        from promptr1.envs.collab_env import PromptCollabEnv

        return PromptCollabEnv
    raise AttributeError(f"module 'promptr1.envs' has no attribute {name!r}")
