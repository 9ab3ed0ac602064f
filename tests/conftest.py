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


class VirtualTime:
    """A clock for code that takes ``clock=`` and ``sleep=`` (the env-LLM limiter): time moves only from one
    sleeper's wake-up to the next, so what a test checks is what the code decided, never how busy the machine was.

    ``sleep(s)`` parks the caller until ``now + s``; a driver task lets every task that can run run, then moves the
    clock to the earliest wake-up and wakes that sleeper, and so on. Use it from one event loop.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)
        self.sleeps: list[float] = []
        self._parked: list[tuple[float, int, object]] = []
        self._driver = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        import asyncio
        import heapq

        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        loop = asyncio.get_running_loop()
        wake = loop.create_future()
        heapq.heappush(self._parked, (self.now + seconds, len(self.sleeps), wake))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await wake

    async def _drive(self) -> None:
        import asyncio
        import heapq

        while self._parked:
            for _ in range(3):  # every task that can run without the clock moving runs first
                await asyncio.sleep(0)
            at, _, wake = heapq.heappop(self._parked)
            self.now = max(self.now, at)
            if not wake.done():
                wake.set_result(None)


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
