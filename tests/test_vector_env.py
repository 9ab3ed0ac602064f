"""The vector env: gymnasium's VectorEnv API, one shared backend, concurrent calls, and the async API."""

from __future__ import annotations

import asyncio
import threading
import time

import gymnasium as gym
import numpy as np
import pytest

import promptr1  # noqa: F401
from promptr1.envs.tasks import Task
from promptr1.envs.vector import PromptCollabVectorEnv
from promptr1.llm_backends import BaseBackend, Completion

TASKS = [Task(f"What is item {i}?", (f"item{i}",), id=f"t{i}") for i in range(8)]
PROMPT = "<think>t</think><interaction_prompt>what is it?</interaction_prompt>"
ANSWER = "<think>t</think><answer>item0</answer>"


class SlowBackend(BaseBackend):
    """Async backend with per-prompt latency; counts calls in flight at once."""

    name = "slow"
    deterministic = True

    def __init__(self, delays: dict[str, float] | None = None, default: float = 0.05,
                 gates: dict[str, threading.Event] | None = None):
        super().__init__()
        self.delays = delays or {}
        self.default = default
        self.gates = gates or {}  # a prompt whose call waits until the test sets its event
        self.in_flight = 0
        self.max_in_flight = 0
        self.loops: set[int] = set()
        self._lock = threading.Lock()

    async def acomplete(self, messages, **sampling):
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.loops.add(id(asyncio.get_running_loop()))
        try:
            gate = self.gates.get(messages[-1]["content"])
            while gate is not None and not gate.is_set():
                await asyncio.sleep(0.005)
            await asyncio.sleep(self.delays.get(messages[-1]["content"], self.default))
        finally:
            with self._lock:
                self.in_flight -= 1
        return Completion(text="reply to " + messages[-1]["content"])


def test_make_vec_uses_our_vector_entry_point_and_shares_one_backend():
    venv = gym.make_vec("PromptR1-v0", num_envs=4, task=TASKS, env_llm="echo")
    try:
        assert isinstance(venv.unwrapped, PromptCollabVectorEnv)
        backends = {id(e.env_llm) for e in venv.unwrapped.envs}
        assert len(backends) == 1
        obs, infos = venv.reset(seed=0)
        assert len(obs) == 4 and all(o.startswith(venv.unwrapped.envs[0].agent_system_prompt) for o in obs)
        assert infos["_turn"].all()
    finally:
        venv.close()


def test_step_runs_calls_concurrently_and_autoresets_next_step():
    backend = SlowBackend(default=0.3)
    venv = PromptCollabVectorEnv(num_envs=8, env_llm=backend, task=TASKS)
    try:
        venv.reset(seed=0)
        obs, rew, term, trunc, infos = venv.step([PROMPT] * 8)
        assert backend.max_in_flight == 8  # all eight calls were in flight together, not one after another
        assert all(o == "<interaction_response>reply to what is it?</interaction_response>" for o in obs)
        actions = [ANSWER] * 4 + [PROMPT] * 4
        obs, rew, term, trunc, infos = venv.step(actions)
        assert term.tolist() == [True] * 4 + [False] * 4
        assert np.all(rew[4:] == 0.0) and np.all(rew[:4] >= -1.0)
        assert infos["_reward_components"][:4].all() and not infos["_reward_components"][4:].any()
        # next-step autoreset: the finished sub-envs restart and ignore their action
        obs, rew, term, trunc, infos = venv.step([ANSWER] * 8)
        assert all("Question:" in o for o in obs[:4])
        assert rew[:4].tolist() == [0.0] * 4 and term[4:].all()
    finally:
        venv.close()


def test_async_api_lets_fast_episodes_run_ahead_of_a_slow_one():
    slow_prompt = "<think>t</think><interaction_prompt>slow</interaction_prompt>"
    release = threading.Event()  # the slow call is outstanding until the test says so: no race with the clock
    backend = SlowBackend(gates={"slow": release}, default=0.0)
    venv = PromptCollabVectorEnv(num_envs=3, env_llm=backend, task=TASKS, max_turns=50)
    try:
        for i in range(3):
            venv.reset_one(i, seed=i)
        venv.submit(0, slow_prompt)
        steps_done = {1: 0, 2: 0}
        venv.submit(1, PROMPT)
        venv.submit(2, PROMPT)
        while min(steps_done.values()) < 10:  # each fast episode moves on 10 times while the slow call is out
            for res in venv.collect(timeout=60):
                assert res.index in (1, 2), "the slow episode cannot have finished yet"
                steps_done[res.index] += 1
                venv.submit(res.index, PROMPT)
        assert 0 in venv.in_flight
        release.set()
        results = venv.collect(timeout=60, min_ready=3)
        assert {r.index for r in results} == {0, 1, 2}
        assert next(r for r in results if r.index == 0).observation.endswith("reply to slow</interaction_response>")
        assert len(backend.loops) == 1
    finally:
        venv.close()


def test_async_api_errors_are_clear():
    venv = PromptCollabVectorEnv(num_envs=2, env_llm="echo", task=TASKS)
    try:
        venv.reset_one(0, seed=0)
        venv.submit(0, PROMPT)
        with pytest.raises(RuntimeError, match="in flight"):
            venv.submit(0, PROMPT)
        assert venv.collect(timeout=60)[0].index == 0
        venv.submit(0, ANSWER)
        assert venv.collect(timeout=60)[0].done
        with pytest.raises(RuntimeError, match="reset_one"):
            venv.submit(0, PROMPT)
        with pytest.raises(ValueError, match="one action per sub-env"):
            venv.step([PROMPT])
    finally:
        venv.close()


def test_vector_env_runs_on_the_openai_backend_loop_and_collects_in_completion_order():
    from promptr1.llm_backends.openai_backend import OpenAIBackend
    from promptr1.testing.fake_server import FakeOpenAIServer

    # the server's n-th request waits 1.6, 1.2, 0.8, 0.4 s: sub-env i's reply is slower for lower i (0.4 s apart, so
    # the order holds however late the loaded machine sends the next request, as long as it is 0.4 s at most)
    delays = iter([1.6, 1.2, 0.8, 0.4])
    with FakeOpenAIServer(latency=lambda rng: next(delays)) as srv:
        backend = OpenAIBackend("fake-model", base_url=srv.base_url, max_concurrency=8, timeout_s=5, deadline_s=10)
        venv = PromptCollabVectorEnv(num_envs=4, env_llm=backend, task=TASKS)
        try:
            assert venv._loop is backend.io_loop_thread()  # no second loop thread, no hand-over per call
            for i in range(4):
                venv.reset_one(i, seed=i)
            for i in range(4):
                venv.submit(i, f"<think>t</think><interaction_prompt>p{i}</interaction_prompt>")
                t0 = time.monotonic()
                while srv.stats()["requests"] < i + 1 and time.monotonic() - t0 < 60:
                    time.sleep(0.002)  # request i reaches the server before request i + 1
            assert venv.collect(timeout=0.01) == []  # nothing has landed yet
            results = venv.collect(timeout=60, min_ready=4)
            assert [r.index for r in results] == [3, 2, 1, 0]
            assert all(r.observation == f"<interaction_response>p{r.index}</interaction_response>" for r in results)
            assert venv.in_flight == [] and venv.collect(timeout=0.01) == []
        finally:
            venv.close()
        assert backend._loop_thread is None  # closing the vector env closed the backend and its loop


def test_close_with_steps_still_queued_or_in_flight_is_clean(recwarn):
    backend = SlowBackend(default=0.5)
    venv = PromptCollabVectorEnv(num_envs=16, env_llm=backend, task=TASKS)
    for i in range(16):
        venv.reset_one(i, seed=i)
        venv.submit(i, PROMPT)
    venv.close()  # some steps may not have started on the loop yet: none is left un-awaited
    import gc

    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_share_backend_loop_false_keeps_a_loop_of_its_own():
    from promptr1.llm_backends.openai_backend import OpenAIBackend
    from promptr1.testing.fake_server import FakeOpenAIServer

    with FakeOpenAIServer() as srv:
        backend = OpenAIBackend("fake-model", base_url=srv.base_url, timeout_s=5, deadline_s=10)
        venv = PromptCollabVectorEnv(num_envs=2, env_llm=backend, task=TASKS, share_backend_loop=False)
        try:
            assert venv._loop is not backend.io_loop_thread()
            venv.reset(seed=0)
            obs, *_ = venv.step([PROMPT] * 2)
            assert obs == ("<interaction_response>what is it?</interaction_response>",) * 2
        finally:
            venv.close()
        assert not venv._loop._thread.is_alive() and backend._loop_thread is None
