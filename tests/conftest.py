"""Shared test helpers: loading the repository's scripts (``benchmarks/``, ``examples/``) as modules; hypothesis
profiles.

Tests import it as ``from conftest import load_script`` (pytest puts ``tests/`` on the path). Under CI (``CI`` set,
as ``.ci/run`` runs) hypothesis is derandomized and keeps no example database, so a CI run is the same every time;
elsewhere it explores new examples on every run.
"""

from __future__ import annotations

import importlib.util
import pathlib
import os
from types import ModuleType

from hypothesis import settings

import pytest

import promptr1.testing  # noqa: F401  (registers the test doubles: --model tiny, --env-llm echo / scripted)

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_script(relpath: str) -> ModuleType:
    """Import a script of the repository (not an installed module) by its path from the repository root."""
    path = ROOT / relpath
    name = "promptr1_script_" + relpath.removesuffix(".py").replace("/", "_").replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no script at {relpath!r} (looked for {path.relative_to(ROOT)} in the repository)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



#: An agent turn that asks the `sim` expert one fact (see the ``always_prompt`` fixture).
PROMPT_TURN = "<think>ask</think><interaction_prompt>Where is Miktha located?</interaction_prompt>"


@pytest.fixture
def always_prompt(monkeypatch):
    """Every agent turn the rollout samples is PROMPT_TURN (the tiny model's own samples never use the tags), so
    every episode makes exactly ``max_turns`` env-LLM calls."""
    import promptr1.agents.rollout as rollout
    from promptr1.agents.rollout import SampledTurn

    def sampler(model, tokenizer, prompts, *, max_new_tokens, **kw):
        ids = tokenizer(PROMPT_TURN, add_special_tokens=False)["input_ids"][:max_new_tokens]
        return [SampledTurn(list(ids), [-1.0] * len(ids), "string") for _ in prompts]

    monkeypatch.setattr(rollout, "sample_turns", sampler)


@pytest.fixture
def advantage_inputs(monkeypatch):
    """The rewards the trainer hands to its advantage estimator, recorded at each call (``seen["rewards"]``)."""
    import promptr1.agents.advantages as adv_mod

    seen: dict = {}
    orig = adv_mod.compute_advantages

    def spy(rewards, *a, **k):
        seen["rewards"] = rewards.clone()
        return orig(rewards, *a, **k)

    monkeypatch.setattr(adv_mod, "compute_advantages", spy)
    return seen
