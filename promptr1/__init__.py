"""prompt-r1: Prompt-R1 (arXiv 2511.01016) as a Gymnasium environment plus RL agents.

Importing this package makes ``PromptR1-v0`` known to Gymnasium and the bundled synthetic world's env LLMs ``sim``
and ``sim-strong`` known to the env-LLM registry. The package root is where the floors are wired together, and it
wires each as it loads: the env is registered when gymnasium is imported (at once if it already is), the ``sim``
experts when the env-LLM registry is. So ``import promptr1.core.registry`` loads neither gymnasium nor an env
(``python -X importtime``), and ``import gymnasium as gym, promptr1; gym.make("PromptR1-v0")`` works in either
order. No library module imports the root.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable

__version__ = "0.1.0"

ENV_ID = "PromptR1-v0"


def register_envs() -> None:
    """Register ``PromptR1-v0`` with Gymnasium (idempotent)."""
    import gymnasium as gym

    if ENV_ID in gym.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="promptr1.envs.collab_env:PromptCollabEnv",
        vector_entry_point="promptr1.envs.vector:make_vector_env",
        nondeterministic=True,
    )


def _register_sim_experts() -> None:
    """The simulated experts answer about the synthetic world (envs/synthetic): registered as lazy references, so
    that naming them imports nothing until one is built."""
    from promptr1.llm_backends.specs import BACKENDS

    for name, ref in (("sim", "promptr1.envs.synthetic.expert:SimExpert"),
                      ("sim-strong", "promptr1.envs.synthetic.expert:StrongSimExpert")):
        if name not in BACKENDS:
            BACKENDS.register(name, ref)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a function right after a module is first imported (or at once if it already is)."""

    def __init__(self) -> None:
        self.pending: dict[str, Callable[[], None]] = {}

    def when_loaded(self, module: str, fn: Callable[[], None]) -> None:
        if module in sys.modules:
            fn()
        else:
            self.pending[module] = fn

    def find_spec(self, name, path=None, target=None):  # noqa: D102 (the finder protocol)
        fn = self.pending.pop(name, None)
        if fn is None:
            return None
        spec = importlib.util.find_spec(name)  # the other finders' answer (this one no longer waits for it)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module, run=run):
            run(module)
            fn()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_HOOK = _AfterImport()
sys.meta_path.insert(0, _HOOK)
_HOOK.when_loaded("gymnasium", register_envs)
_HOOK.when_loaded("promptr1.llm_backends.specs", _register_sim_experts)
