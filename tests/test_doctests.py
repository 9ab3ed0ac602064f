"""Run the doctests of the library's modules (rewards, metrics and estimators are documented by example).

Every module of the packages in ``PACKAGES`` is collected automatically; ``MODULES`` adds single
modules. A module in ``NEEDS_EXAMPLES`` must contain at least one example. Other areas extend
these lists.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ["promptr1.rewards", "promptr1.envs", "promptr1.envs.synthetic", "promptr1.llm_backends",
            "promptr1.evaluation"]
MODULES = ["promptr1.commands.play", "promptr1.agents.interrupt", "promptr1.agents.logger", "promptr1.core.registry",
           "promptr1.core.settings", "promptr1.core.tags", "promptr1.agents.config",
           "promptr1.agents.advantages", "promptr1.agents.losses", "promptr1.agents.registry", "promptr1.agents.masks",
           "promptr1.testing.agents", "promptr1.testing.scripted", "promptr1.integrations.trl",
           "promptr1.commands.serve"]
NEEDS_EXAMPLES = {
    "promptr1.rewards",
    "promptr1.rewards.metrics",
    "promptr1.rewards.dual",
    "promptr1.llm_backends.specs",
    "promptr1.llm_backends.assemble",
    "promptr1.llm_backends.base",
    "promptr1.testing.scripted",
    "promptr1.core.registry",
    "promptr1.core.settings",
    "promptr1.envs.framing",
    "promptr1.envs.task_types",
    "promptr1.envs.protocol",
    "promptr1.envs.spaces",
    "promptr1.envs.tasks",
    "promptr1.commands.play",
}


def _modules() -> list[str]:
    names = set(MODULES)
    for package in PACKAGES:
        names.add(package)
        path = importlib.import_module(package).__path__
        names.update(f"{package}.{info.name}" for info in pkgutil.iter_modules(path))
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name} (run python -m doctest -v on it)"
    if name in NEEDS_EXAMPLES:
        assert result.attempted > 0, f"{name} has no doctest; add a >>> example to its public functions"
