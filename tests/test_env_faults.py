"""Environment errors are not answers (docs/architecture.md, environment errors), end to end.

500 episodes run through the vector env and the real `openai` client against the loopback fake
server, with faults injected into 20% of the episodes. Every failing episode must be flagged, no
exception may escape, and no error text may reach any observation.
"""

from __future__ import annotations

import random

import pytest

from promptr1.envs.tasks import Task
from promptr1.envs.vector import PromptCollabVectorEnv
from promptr1.testing.fake_server import FakeOpenAIServer
from promptr1.llm_backends.openai_backend import OpenAIBackend

FAULTS = ("429", "500", "503", "drop", "empty", "badjson")
N_EPISODES = 500
N_ENVS = 32


def _schedule(index, body):
    """Fail every attempt of a chat whose last prompt carries a FAULT=<name> marker."""
    last = body["messages"][-1]["content"]
    if "FAULT=" in last:
        return last.split("FAULT=")[1].split()[0]
    return None


def test_injected_faults_flag_exactly_the_failing_episodes_and_never_leak():
    rng = random.Random(0)
    failing = set(rng.sample(range(N_EPISODES), N_EPISODES // 5))  # 20% of the episodes
    plans = {}
    for k in range(N_EPISODES):
        second = f"second question of episode {k}"
        if k in failing:
            second += f" FAULT={FAULTS[k % len(FAULTS)]} "
        plans[k] = [
            f"<think>t</think><interaction_prompt>first question of episode {k}</interaction_prompt>",
            f"<think>t</think><interaction_prompt>{second}</interaction_prompt>",
            "<think>t</think><answer>gold</answer>",
        ]
    tasks = [Task("What is gold?", ("gold",), id="q")]
    with FakeOpenAIServer(schedule=_schedule, retry_after_s=0.01, seed=0, record_bodies=False) as srv:
        backend = OpenAIBackend("fake-model", base_url=srv.base_url, api_key="sk-test-not-a-secret",
                                max_retries=2, backoff_base_s=0.001, backoff_max_s=0.01,
                                timeout_s=10, deadline_s=20, max_concurrency=16)
        venv = PromptCollabVectorEnv(num_envs=N_ENVS, env_llm=backend, task=tasks, max_turns=5)
        try:
            next_episode = 0
            running: dict[int, tuple[int, int]] = {}  # sub-env -> (episode, turn index)
            outcomes: dict[int, dict] = {}
            observations: list[str] = []

            def start(i: int) -> None:
                nonlocal next_episode
                ep = next_episode
                next_episode += 1
                venv.reset_one(i, seed=ep)
                running[i] = (ep, 0)
                venv.submit(i, plans[ep][0])

            for i in range(N_ENVS):
                start(i)
            while running:
                for res in venv.collect(timeout=30):
                    ep, t = running.pop(res.index)
                    observations.append(res.observation)
                    if res.done:
                        outcomes[ep] = {"env_error": res.info["env_error"], "reward": res.reward,
                                        "terminated": res.terminated, "truncated": res.truncated}
                        if next_episode < N_EPISODES:
                            start(res.index)
                    else:
                        running[res.index] = (ep, t + 1)
                        venv.submit(res.index, plans[ep][t + 1])
        finally:
            venv.close()
        stats = srv.stats()

    assert len(outcomes) == N_EPISODES
    flagged = {ep for ep, o in outcomes.items() if o["env_error"]}
    assert flagged == failing
    for ep in failing:
        o = outcomes[ep]
        assert o["truncated"] and not o["terminated"]
        assert o["env_error"].split(":")[0] in {"rate_limit", "server_error", "connection", "empty_reply",
                                                  "malformed_reply", "timeout", "deadline", "error"}
    for ep in set(outcomes) - failing:
        assert outcomes[ep]["terminated"] and outcomes[ep]["reward"] == pytest.approx(1.0)
    # only clean replies ever reached the agent: every non-empty observation is an echo of a clean prompt
    for obs in observations:
        assert obs == "" or (obs.startswith("<interaction_response>") and "question of episode" in obs)
        assert "FAULT" not in obs and "sk-test" not in obs and "Error" not in obs
    # each failing chat was tried 1 + max_retries times (a dropped connection counts the same)
    assert sum(stats["faults"].values()) == len(failing) * 3
    assert stats["max_in_flight"] <= 16
