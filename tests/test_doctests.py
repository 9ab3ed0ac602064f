"""Run the doctests of the library's modules (rewards, metrics and estimators are documented by example).

Other areas add their modules to ``MODULES``: the module's dotted name and whether it must
contain at least one example.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES: list[tuple[str, bool]] = [
    ("promptr1.rewards", True),
    ("promptr1.rewards.metrics", True),
    ("promptr1.rewards.dual", True),
    ("promptr1.llm_backends", True),
    ("promptr1.llm_backends.base", True),
    ("promptr1.llm_backends.scripted", True),
]


@pytest.mark.parametrize("name, needs_examples", MODULES, ids=[m[0] for m in MODULES])
def test_doctests(name: str, needs_examples: bool) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name} (run python -m doctest -v on it)"
    if needs_examples:
        assert result.attempted > 0, f"{name} has no doctest; add a >>> example to its public functions"
