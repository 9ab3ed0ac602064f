"""Record/replay cache: keys, modes, hits, replay misses, concurrent writers (threads and processes)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import pickle
import sqlite3
import threading

import pytest
from promptr1.llm_backends.base import BaseBackend, Completion, EnvLLMError
from promptr1.llm_backends.cache import CachedBackend, ResponseCache, cache_key
from promptr1.testing.scripted import ScriptedBackend


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]


class CountingBackend(BaseBackend):
    """Replies ``reply:<last user text>:<call number>`` so a re-call is visible."""

    name = "counting"

    def __init__(self, model: str = "count-1") -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self._lock = threading.Lock()

    def complete(self, messages, **sampling):
        with self._lock:
            self.calls += 1
            n = self.calls
        return Completion(text=f"reply:{messages[-1]['content']}:{n}", prompt_tokens=5, completion_tokens=3,
                          cost_usd=0.01, latency_s=0.2, model=self.model)


def test_cache_key_covers_every_input():
    base = dict(backend="openai", model="m", messages=chat("q"), sampling={"temperature": 0.0, "seed": 1})
    k = cache_key(**base)
    assert len(k) == 64 and int(k, 16) >= 0
    variants = [
        {**base, "backend": "hf"},
        {**base, "model": "m2"},
        {**base, "messages": chat("q2")},
        {**base, "messages": [{"role": "user", "content": "q"}]},
        {**base, "sampling": {"temperature": 0.5, "seed": 1}},
        {**base, "sampling": {"temperature": 0.0, "seed": 2}},
        {**base, "sampling": {"temperature": 0.0, "seed": 1, "max_tokens": 10}},
    ]
    assert len({k} | {cache_key(**v) for v in variants}) == len(variants) + 1
    # order of sampling keys and None values do not matter
    assert k == cache_key(**{**base, "sampling": {"seed": 1, "temperature": 0.0, "top_p": None}})


def test_replay_or_record_hits_after_first_call(tmp_path):
    inner = CountingBackend()
    b = CachedBackend(inner, tmp_path / "c.sqlite", mode="replay-or-record")
    first = b.complete(chat("q"), temperature=0.0)
    second = b.complete(chat("q"), temperature=0.0)
    assert inner.calls == 1
    assert first.text == second.text == "reply:q:1"
    assert not first.cached and second.cached
    assert second.attempts == 0 and second.cost_usd == 0.0
    assert (second.prompt_tokens, second.completion_tokens, second.model) == (5, 3, "count-1")
    assert second.extra["recorded_cost_usd"] == 0.01 and second.extra["recorded_latency_s"] == 0.2
    assert second.extra["cache_key"] == first.extra["cache_key"]
    # a different sampling parameter is a different request
    assert b.complete(chat("q"), temperature=0.7).text == "reply:q:2"
    assert b.stats() == {"hits": 1, "misses": 2, "writes": 2, "replay_misses": 0}
    assert b.name == "counting" and b.model == "count-1"


def test_replay_miss_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    CachedBackend(CountingBackend(), path, mode="record").complete(chat("known"))
    inner = CountingBackend()
    b = CachedBackend(inner, path, mode="replay")
    assert b.complete(chat("known")).text == "reply:known:1"
    with pytest.raises(EnvLLMError) as ei:
        b.complete(chat("unknown"))
    assert ei.value.kind == "replay_miss" and ei.value.attempts == 0
    assert "record" in str(ei.value)
    assert inner.calls == 0  # replay never calls the backend
    assert b.stats()["replay_misses"] == 1


def test_record_mode_always_calls_and_overwrites(tmp_path):
    path = tmp_path / "c.sqlite"
    inner = CountingBackend()
    rec = CachedBackend(inner, path, mode="record")
    rec.complete(chat("q"))
    rec.complete(chat("q"))
    assert inner.calls == 2
    assert CachedBackend(CountingBackend(), path, mode="replay").complete(chat("q")).text == "reply:q:2"
    assert len(ResponseCache(path)) == 1


def test_off_mode_does_not_touch_the_disk(tmp_path):
    path = tmp_path / "c.sqlite"
    inner = CountingBackend()
    b = CachedBackend(inner, path, mode="off")
    b.complete(chat("q"))
    b.complete(chat("q"))
    assert inner.calls == 2 and not path.exists()


def test_mode_validation(tmp_path):
    with pytest.raises(ValueError, match="replay-or-record"):
        CachedBackend(CountingBackend(), tmp_path / "c.sqlite", mode="replay_and_record")
    assert CachedBackend(CountingBackend(), tmp_path / "c.sqlite", mode="replay_or_record").mode == "replay-or-record"
    with pytest.raises(TypeError):
        CachedBackend("not a backend", tmp_path / "c.sqlite")


def test_failures_are_not_cached(tmp_path):
    inner = ScriptedBackend([EnvLLMError("boom", kind="server_error"), "fine"])
    b = CachedBackend(inner, tmp_path / "c.sqlite")
    with pytest.raises(EnvLLMError):
        b.complete(chat("q"))
    assert b.complete(chat("q")).text == "fine"
    assert b.complete(chat("q")).cached


def test_async_path_and_sim_like_backends(tmp_path):
    inner = ScriptedBackend(lambda msgs: msgs[-1]["content"][::-1])
    b = CachedBackend(inner, tmp_path / "c.sqlite")

    async def main():
        first = await asyncio.gather(*(b.acomplete(chat(f"q{i}")) for i in range(10)))
        again = await asyncio.gather(*(b.acomplete(chat(f"q{i}")) for i in range(10)))
        return first, again

    first, again = asyncio.run(main())
    assert [c.text for c in first] == [f"q{i}"[::-1] for i in range(10)]
    assert [c.text for c in again] == [c.text for c in first] and all(c.cached for c in again)
    assert len(inner.calls) == 10


def test_wraps_the_openai_backend_and_replays_offline(tmp_path):
    # imported here, not at the top: the process test's children import this module
    from promptr1.testing.fake_server import FakeOpenAIServer
    from promptr1.llm_backends.openai_backend import OpenAIBackend

    path = tmp_path / "c.sqlite"
    with FakeOpenAIServer() as srv:
        live = CachedBackend(OpenAIBackend("fake-model", base_url=srv.base_url, default_sampling={"temperature": 0}),
                             path, mode="record")
        c = live.complete(chat("hello cache"), seed=3)
        assert c.text == "hello cache" and not c.cached
        live.close()
    # the server is gone: replay still answers, from disk
    offline = CachedBackend(OpenAIBackend("fake-model", base_url="http://127.0.0.1:9/v1",
                                          default_sampling={"temperature": 0}), path, mode="replay")
    r = offline.complete(chat("hello cache"), seed=3)
    assert r.cached and r.text == "hello cache" and (r.prompt_tokens, r.completion_tokens) == (3, 2)
    assert offline.stats()["inner"]["calls"] == 0
    # the backend's default sampling is part of the key
    other = CachedBackend(OpenAIBackend("fake-model", base_url="http://127.0.0.1:9/v1",
                                        default_sampling={"temperature": 1.0}), path, mode="replay")
    with pytest.raises(EnvLLMError, match="replay miss"):
        other.complete(chat("hello cache"), seed=3)


def test_namespace_separates_experiments(tmp_path):
    path = tmp_path / "c.sqlite"
    CachedBackend(CountingBackend(), path, mode="record", namespace="exp-a").complete(chat("q"))
    with pytest.raises(EnvLLMError):
        CachedBackend(CountingBackend(), path, mode="replay", namespace="exp-b").complete(chat("q"))


def test_pickle_round_trip(tmp_path):
    from promptr1.testing.fake_server import FakeOpenAIServer
    from promptr1.llm_backends.openai_backend import OpenAIBackend

    with FakeOpenAIServer() as srv:
        b = CachedBackend(OpenAIBackend("fake-model", base_url=srv.base_url), tmp_path / "c.sqlite")
        assert not b.complete(chat("q")).cached
        b2 = pickle.loads(pickle.dumps(b))
        assert b2.mode == b.mode and b2.path == b.path
        assert b2.complete(chat("q")).cached
        assert not b2.complete(chat("q2")).cached  # the unpickled inner backend works too
        assert b2.stats()["writes"] == 1


def _check_db(path, expected: dict[str, str]) -> None:
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = dict(conn.execute("SELECT key, text FROM completions").fetchall())
    conn.close()
    assert rows == expected


def test_concurrent_writers_threads(tmp_path):
    path = tmp_path / "c.sqlite"
    n_threads, n_prompts = 8, 60
    errors = []

    def worker(t: int) -> None:
        try:
            # each thread has its own wrapper and backend; prompts overlap between threads
            b = CachedBackend(ScriptedBackend(lambda m: "ans:" + m[-1]["content"]), path, mode="replay-or-record")
            for i in range(n_prompts):
                j = (i * (t + 1)) % n_prompts
                assert b.complete(chat(f"p{j}")).text == f"ans:p{j}"
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    keys = {cache_key("scripted", "", chat(f"p{j}"), {}): f"ans:p{j}" for j in range(n_prompts)}
    _check_db(path, keys)


def _process_writer(path: str, worker: int, n: int, barrier) -> None:
    b = CachedBackend(ScriptedBackend(lambda m: "ans:" + m[-1]["content"]), path, mode="record")
    barrier.wait()
    for i in range(n):
        b.complete(chat(f"w{worker}-{i}"))  # distinct rows per process
        b.complete(chat(f"shared-{i}"))  # the same rows from both processes


def test_concurrent_writers_two_processes(tmp_path):
    path = str(tmp_path / "c.sqlite")
    n = 150
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_process_writer, args=(path, w, n, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    expected = {}
    for i in range(n):
        for w in range(2):
            expected[cache_key("scripted", "", chat(f"w{w}-{i}"), {})] = f"ans:w{w}-{i}"
        expected[cache_key("scripted", "", chat(f"shared-{i}"), {})] = f"ans:shared-{i}"
    _check_db(path, expected)
