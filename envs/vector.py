"""Many Prompt-R1 episodes at once, sharing one environment LLM client and its limiter.

:class:`PromptCollabVectorEnv` is a standard ``gymnasium.vector.VectorEnv`` (``reset`` /
``step`` over all sub-envs, next-step autoreset, info dicts with ``_key`` masks) whose step calls
the environment LLM for every sub-episode concurrently on one event loop.

A batch ``step`` still waits for the slowest call. For training and evaluation, where each
episode should move on as soon as its own reply arrives, use the asynchronous API:

* :meth:`PromptCollabVectorEnv.submit` ``(i, action)`` starts sub-env ``i``'s step and returns
  at once;
* :meth:`PromptCollabVectorEnv.collect` ``(timeout=None, min_ready=1)`` returns the steps that
  have finished, as :class:`StepResult` records, in completion order;
* :meth:`PromptCollabVectorEnv.reset_one` ``(i)`` restarts a finished sub-env.

So no episode waits for another episode's slow call (the reference code waits at every turn).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.spaces import Tuple as TupleSpace
from gymnasium.vector import AutoresetMode, VectorEnv

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.llm_backends import LLMBackend, make_backend
from promptr1.llm_backends.base import LoopThread

__all__ = ["PromptCollabVectorEnv", "StepResult", "make_vector_env"]


@dataclass(frozen=True)
class StepResult:
    """One finished sub-env step from the asynchronous API."""

    index: int
    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


class PromptCollabVectorEnv(VectorEnv):
    """``num_envs`` :class:`PromptCollabEnv` sharing one backend; see the module docstring.

    All keyword arguments of :class:`PromptCollabEnv` are accepted. ``env_llm`` given as a spec
    string is built once and shared by every sub-env (one client, one concurrency limiter).

    The sub-envs' steps run on one event loop thread. A backend that owns an I/O loop
    (``OpenAIBackend.io_loop_thread()``) lends it, so a call does not cross between two threads
    (at hundreds of calls per second that hand-over is a visible share of the CPU).
    ``share_backend_loop=False`` keeps a loop of the vector env's own: better when the reward does
    heavy work that releases the GIL (an embedding model), which then overlaps the backend's I/O.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": ["ansi"]}

    def __init__(self, num_envs: int, env_llm: str | LLMBackend = "sim", *, share_backend_loop: bool = True,
                 **env_kwargs: Any) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}.")
        backend_kwargs = env_kwargs.pop("backend_kwargs", None) or {}
        env_kwargs.pop("max_episode_steps", None)  # episodes end by max_turns; gymnasium may pass this
        self.backend = make_backend(env_llm, **backend_kwargs)
        self.envs = [PromptCollabEnv(env_llm=self.backend, **env_kwargs) for _ in range(num_envs)]
        self.num_envs = num_envs
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = TupleSpace([self.single_observation_space] * num_envs)
        self.action_space = TupleSpace([self.single_action_space] * num_envs)
        self.render_mode = env_kwargs.get("render_mode")
        # A backend with its own I/O loop (OpenAIBackend) lends it: the episodes' steps then run on the
        # loop their requests run on, with no hand-over between two threads per call.
        lend = getattr(self.backend, "io_loop_thread", None) if share_backend_loop else None
        self._owns_loop = not callable(lend)
        self._loop = LoopThread("promptr1-vector-loop") if self._owns_loop else lend()
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._inflight: dict[int, Future] = {}
        self._seeds_rng: np.random.Generator | None = None
        # asynchronous API: finished sub-env indices in completion order (appended by the loop thread),
        # and steps submitted but not yet started on the loop (started in batches: one wake-up each)
        self._done: collections.deque[int] = collections.deque()
        self._done_cv = threading.Condition(threading.Lock())
        self._to_start: list[tuple[Any, Future]] = []
        self._start_lock = threading.Lock()

    # ------------------------------------------------------------------ batch API (gymnasium)
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        self._drain()
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            if len(seed) != self.num_envs:
                raise ValueError(f"reset(seed=list) needs {self.num_envs} seeds, got {len(seed)}.")
            seeds = list(seed)
        obs, infos = [], {}
        for i, (env, s) in enumerate(zip(self.envs, seeds)):
            o, info = env.reset(seed=s, options=options)
            obs.append(o)
            infos = self._add_info(infos, info, i)
        self._autoreset[:] = False
        return tuple(obs), infos

    def step(self, actions):
        if len(actions) != self.num_envs:
            raise ValueError(f"step() needs one action per sub-env ({self.num_envs}), got {len(actions)}.")
        self._drain()
        obs: list[str] = [""] * self.num_envs
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terms = np.zeros(self.num_envs, dtype=bool)
        truncs = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        futures: dict[int, Future] = {}
        for i, env in enumerate(self.envs):
            if self._autoreset[i]:
                o, info = env.reset()
                obs[i] = o
                infos = self._add_info(infos, info, i)
            else:
                futures[i] = self._loop.submit(env.astep(actions[i]))
        for i, fut in futures.items():
            o, r, te, tr, info = fut.result()
            obs[i], rewards[i], terms[i], truncs[i] = o, r, te, tr
            infos = self._add_info(infos, info, i)
        self._autoreset = terms | truncs
        return tuple(obs), rewards, terms, truncs, infos

    # ------------------------------------------------------------------ asynchronous API
    def submit(self, index: int, action: str) -> None:
        """Start sub-env ``index``'s step with ``action``; returns immediately."""
        if index in self._inflight:
            raise RuntimeError(f"sub-env {index} already has a step in flight; collect() it first.")
        if self.envs[index].done:
            raise RuntimeError(f"sub-env {index}'s episode has finished; call reset_one({index}) first.")
        fut: Future = Future()
        self._inflight[index] = fut
        fut.add_done_callback(lambda _f, i=index: self._mark_done(i))
        with self._start_lock:
            self._to_start.append((self.envs[index].astep(action), fut))
            wake = len(self._to_start) == 1
        if wake:  # steps submitted back to back share one wake-up of the loop thread
            self._loop.loop.call_soon_threadsafe(self._start_pending)

    def _start_pending(self) -> None:
        """On the loop thread: start every submitted step as a task chained to its future."""
        with self._start_lock:
            batch, self._to_start = self._to_start, []
        loop = self._loop.loop
        for coro, fut in batch:
            if not fut.set_running_or_notify_cancel():  # cancelled before it started
                coro.close()
                continue
            task = loop.create_task(coro)
            task.add_done_callback(lambda t, f=fut: _copy_outcome(t, f))
            fut.add_done_callback(lambda f, t=task: f.cancelled() and loop.call_soon_threadsafe(t.cancel))

    def _mark_done(self, index: int) -> None:
        with self._done_cv:
            self._done.append(index)
            self._done_cv.notify()

    def collect(self, timeout: float | None = None, min_ready: int = 1) -> list[StepResult]:
        """Finished steps (at least ``min_ready`` unless ``timeout`` passes), in completion order."""
        results: list[StepResult] = []
        if not self._inflight:
            return results
        need = min(min_ready, len(self._inflight))
        with self._done_cv:
            if len(self._done) < need:
                self._done_cv.wait_for(lambda: len(self._done) >= need, timeout)
            done = [i for i in self._done if i in self._inflight]
            self._done.clear()
        for i in done:
            o, r, te, tr, info = self._inflight.pop(i).result()
            results.append(StepResult(i, o, float(r), bool(te), bool(tr), info))
        if any(r.done for r in results):
            for r in results:
                self._autoreset[r.index] = r.done
        return results

    def reset_one(self, index: int, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start a new episode in sub-env ``index``; returns ``(obs, info)``."""
        if index in self._inflight:
            raise RuntimeError(f"sub-env {index} has a step in flight; collect() it before resetting.")
        self._autoreset[index] = False
        return self.envs[index].reset(seed=seed, options=options)

    @property
    def in_flight(self) -> list[int]:
        return sorted(self._inflight)

    # ------------------------------------------------------------------ housekeeping
    def _drain(self) -> None:
        for fut in self._inflight.values():
            fut.result()
        self._inflight.clear()
        with self._done_cv:
            self._done.clear()

    def render(self):
        return tuple(env.transcript() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        with self._start_lock:
            unstarted, self._to_start = self._to_start, []
        for coro, _ in unstarted:
            coro.close()
        for fut in self._inflight.values():
            fut.cancel()
        self._inflight.clear()
        if self._owns_loop:
            self._loop.stop(join_timeout=5)
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


def _copy_outcome(task: asyncio.Task, fut: Future) -> None:
    """Hand a finished step's result (or exception) from its loop task to the caller's future."""
    if fut.done():
        return
    if task.cancelled():
        fut.cancel()
        return
    exc = task.exception()
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(task.result())
    except InvalidStateError:  # cancelled by close() meanwhile
        pass


def make_vector_env(num_envs: int = 1, **kwargs: Any) -> PromptCollabVectorEnv:
    """The ``vector_entry_point`` of ``PromptR1-v0``: ``gym.make_vec("PromptR1-v0", num_envs=N, ...)``."""
    return PromptCollabVectorEnv(num_envs=num_envs, **kwargs)
