"""prompt-r1: Prompt-R1 (arXiv 2511.01016) as a Gymnasium environment plus RL agents.

Importing this package registers ``PromptR1-v0`` with Gymnasium and the bundled synthetic world's env LLM
``sim`` (:mod:`promptr1.envs.synthetic`): the package root is where the layers are wired together, and no library
module imports it.
"""

from __future__ import annotations

__version__ = "0.1.0"

ENV_ID = "PromptR1-v0"


def register_envs() -> None:
    """Register ``PromptR1-v0`` (idempotent)."""
    import gymnasium as gym

    if ENV_ID in gym.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="promptr1.envs.collab_env:PromptCollabEnv",
        vector_entry_point="promptr1.envs.vector:make_vector_env",
        nondeterministic=True,
    )


register_envs()

import promptr1.envs.synthetic  # noqa: E402,F401  (registers the `sim` env LLM)
