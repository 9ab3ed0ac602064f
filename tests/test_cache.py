"""Record/replay cache: keys, modes, hits, replay misses, concurrent writers (threads and processes)."""

from __future__ import annotations

import asyncio
import copy
import multiprocessing as mp
import os
import pickle
import sqlite3
import threading

import pytest
from promptr1.llm_backends.base import BaseBackend, Completion, EnvLLMError
from promptr1.llm_backends.cache import CachedBackend, CacheFileError, ResponseCache, cache_key

from promptr1.testing.scripted import EchoBackend, ScriptedBackend


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
    from promptr1.llm_backends.openai_backend import OpenAIBackend

    from promptr1.testing.fake_server import FakeOpenAIServer

    path = tmp_path / "c.sqlite"
    with FakeOpenAIServer() as srv:
        url = srv.base_url
        live = CachedBackend(OpenAIBackend("fake-model", base_url=url, default_sampling={"temperature": 0}),
                             path, mode="record")
        c = live.complete(chat("hello cache"), seed=3)
        assert c.text == "hello cache" and not c.cached
        live.close()
    # the server is gone: replay still answers, from disk (the same base URL: it is part of the key)
    offline = CachedBackend(OpenAIBackend("fake-model", base_url=url, default_sampling={"temperature": 0}), path,
                            mode="replay")
    r = offline.complete(chat("hello cache"), seed=3)
    assert r.cached and r.text == "hello cache" and (r.prompt_tokens, r.completion_tokens) == (3, 2)
    assert offline.stats()["inner"]["calls"] == 0
    # the backend's default sampling is part of the key
    other = CachedBackend(OpenAIBackend("fake-model", base_url=url, default_sampling={"temperature": 1.0}), path,
                          mode="replay")
    with pytest.raises(EnvLLMError, match="replay miss"):
        other.complete(chat("hello cache"), seed=3)


def test_namespace_separates_experiments(tmp_path):
    path = tmp_path / "c.sqlite"
    CachedBackend(CountingBackend(), path, mode="record", namespace="exp-a").complete(chat("q"))
    with pytest.raises(EnvLLMError):
        CachedBackend(CountingBackend(), path, mode="replay", namespace="exp-b").complete(chat("q"))


def test_pickle_round_trip(tmp_path):
    from promptr1.llm_backends.openai_backend import OpenAIBackend

    from promptr1.testing.fake_server import FakeOpenAIServer

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
        except Exception as e:  # noqa: BLE001  # pragma: no cover - reported below
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


# --- keys: the backend's identity and every sampling keyword (issue 18, item 8) ------------------------------
class IdentityBackend(CountingBackend):
    """A backend whose replies depend on a setting besides the messages, which it reports as its identity."""

    def __init__(self, base_url: str = "http://a/v1", extra_body: dict | None = None) -> None:
        super().__init__()
        self.base_url, self.extra_body = base_url, dict(extra_body or {})

    def cache_identity(self):
        return {"base_url": self.base_url, "extra_body": self.extra_body}


def test_key_mixes_the_backend_identity(tmp_path):
    path = tmp_path / "c.sqlite"
    rec = CachedBackend(IdentityBackend("http://a/v1", {"top_k": 20}), path, mode="record")
    rec.complete(chat("q"))
    (stored,) = ResponseCache(path).requests()
    assert stored["identity"] == {"base_url": "http://a/v1", "extra_body": {"top_k": 20}}
    assert CachedBackend(IdentityBackend("http://a/v1", {"top_k": 20}), path, mode="replay").complete(chat("q")).cached
    for other in (IdentityBackend("http://b/v1", {"top_k": 20}), IdentityBackend("http://a/v1", {"top_k": 40}),
                  IdentityBackend("http://a/v1")):
        with pytest.raises(EnvLLMError, match="replay miss"):
            CachedBackend(other, path, mode="replay").complete(chat("q"))
    # a setting changed after construction counts too: the identity is asked on every call
    rec.inner.base_url = "http://c/v1"
    assert rec.key_for(chat("q"), {})[0] != CachedBackend(IdentityBackend(), path).key_for(chat("q"), {})[0]


def test_identity_through_a_budget_wrapper_and_a_bad_identity(tmp_path):
    from promptr1.llm_backends.budget import Budget, BudgetedBackend

    path = tmp_path / "c.sqlite"
    direct = CachedBackend(IdentityBackend("http://a/v1"), path)
    wrapped = CachedBackend(BudgetedBackend(IdentityBackend("http://a/v1"), Budget()), path)
    elsewhere = CachedBackend(BudgetedBackend(IdentityBackend("http://b/v1"), Budget()), path)
    assert wrapped.cache_identity() == direct.cache_identity() != elsewhere.cache_identity()
    assert wrapped.key_for(chat("q"), {})[0] == direct.key_for(chat("q"), {})[0] != elsewhere.key_for(chat("q"), {})[0]

    class Bad(CountingBackend):
        def cache_identity(self):
            return "http://a/v1"

    with pytest.raises(TypeError, match="must return a dict"):
        CachedBackend(Bad(), path).complete(chat("q"))


def test_empty_identity_keeps_the_old_keys(tmp_path):
    # backends without an identity (or with an empty one) keep the keys recorded before identities existed
    b = CachedBackend(CountingBackend(), tmp_path / "c.sqlite")
    assert b.cache_identity() == {}
    key, req = b.key_for(chat("q"), {"temperature": 0.0})
    assert "identity" not in req and key == cache_key("counting", "count-1", chat("q"), {"temperature": 0.0})


def test_every_sampling_keyword_is_in_the_key(tmp_path):
    np = pytest.importorskip("numpy")
    b = CachedBackend(CountingBackend(), tmp_path / "c.sqlite")
    base = {"temperature": 0.7, "seed": 1}
    keys = [b.key_for(chat("q"), s)[0] for s in (
        base,
        {**base, "top_k": 20},
        {**base, "top_k": 40},
        {**base, "repetition_penalty": 1.05},
        {**base, "extra_body": {"min_p": 0.1}},
        {**base, "extra_body": {"min_p": 0.2}},
        {**base, "stop": ["\n"]},
        {**base, "max_tokens": 10},
    )]
    assert len(set(keys)) == len(keys)
    # what does not change the request does not change the key: order, None ("the default"), numpy scalars
    assert b.key_for(chat("q"), {"seed": 1, "temperature": 0.7, "top_k": None})[0] == keys[0]
    assert b.key_for(chat("q"), {"temperature": 0.7, "seed": np.int64(1)})[0] == keys[0]
    assert b.key_for(chat("q"), {**base, "top_k": np.int64(20)})[0] == keys[1]


def test_sim_expert_identity_separates_worlds(tmp_path):
    from promptr1.envs.synthetic.expert import SimExpert

    path = tmp_path / "c.sqlite"
    question = chat("What is 12 * 4?")
    CachedBackend(SimExpert(world_seed=0), path, mode="record").complete(question)
    assert CachedBackend(SimExpert(world_seed=0), path, mode="replay").complete(question).cached
    for other in (SimExpert(world_seed=1), SimExpert(world_seed=0, vague_style="wrong"),
                  SimExpert(world_seed=0, max_prompt_chars=100)):
        with pytest.raises(EnvLLMError, match="replay miss"):
            CachedBackend(other, path, mode="replay").complete(question)
    assert pickle.loads(pickle.dumps(SimExpert(world_seed=2))).cache_identity() == SimExpert(2).cache_identity()


def test_hf_backend_identity_covers_weights_and_settings(tmp_path):
    pytest.importorskip("transformers")
    from promptr1.llm_backends.hf_backend import HFBackend
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptr1.testing.tiny_model import tiny_model_path

    folder = tiny_model_path()
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)

    def key(**kw):
        b = CachedBackend(HFBackend(folder, model=kw.pop("model", model), tokenizer=tok, **kw), tmp_path / "c.sqlite")
        assert b.model == str(folder)  # the name, not the torch module's repr
        return b.key_for(chat("q"), {})[0]

    k = key()
    assert key() == k  # the same weights and settings: the same key
    tuned = copy.deepcopy(model)
    with __import__("torch").no_grad():
        for p in tuned.parameters():
            p.add_(1e-3)
    others = [key(model=tuned), key(model=copy.deepcopy(model).to(dtype=__import__("torch").bfloat16)),
              key(temperature=0.7), key(top_p=0.9), key(max_new_tokens=8), key(seed=1), key(system_prompt="Be brief.")]
    assert len({k, *others}) == len(others) + 1


def test_wraps_openai_keys_on_the_base_url(tmp_path):
    from promptr1.llm_backends.openai_backend import OpenAIBackend

    a = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1")
    if not a.cache_identity():
        pytest.skip("OpenAIBackend.cache_identity() is not implemented yet (issue 18, item 8).")
    b = OpenAIBackend("m", base_url="http://127.0.0.1:10/v1")
    path = tmp_path / "c.sqlite"
    assert CachedBackend(a, path).key_for(chat("q"), {})[0] != CachedBackend(b, path).key_for(chat("q"), {})[0]


# --- connections: bounded, whatever the threads and event loops (issue 18, item 5) --------------------------
def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fds_on(path) -> int:
    """File descriptors of this process open on ``path`` itself: one per SQLite connection."""
    target, n = os.path.realpath(path), 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:  # closed while listing (e.g. the listing's own descriptor)
            pass
    return n


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")


@needs_proc
def test_connections_and_descriptors_stay_flat_over_many_event_loops(tmp_path):
    # Each asyncio.run brings new executor threads, as every training step, evaluation and validation does.
    # With a connection per thread, 200 rounds left ~1200 connections and ~2400 descriptors open.
    path = tmp_path / "c.sqlite"
    b = CachedBackend(ScriptedBackend(lambda m: "ans:" + m[-1]["content"]), path)

    async def one_round(r: int) -> list:
        # half new prompts (a miss and a write each), half repeated ones (hits after the first round)
        return await asyncio.gather(*(b.acomplete(chat(f"r{r}-{i}" if i < 8 else f"shared-{i}")) for i in range(16)))

    for r in range(200):
        replies = asyncio.run(one_round(r))
        assert [c.text for c in replies] == [f"ans:r{r}-{i}" if i < 8 else f"ans:shared-{i}" for i in range(16)]
        if r == 4:
            fds_early, conns_early = _open_fds(), _fds_on(path)
    # flat: at most the pool filling up to max_connections (4: a descriptor or two each) after round 5
    assert _open_fds() <= fds_early + 8, (fds_early, _open_fds())
    assert conns_early <= _fds_on(path) <= b.store.max_connections
    assert b.store.connections() <= b.store.max_connections
    assert b.stats()["writes"] == 200 * 8 + 8 and b.stats()["hits"] == 199 * 8
    b.close()
    assert _fds_on(path) == 0 and b.store.connections() == 0


def test_pool_is_bounded_under_many_threads(tmp_path):
    path = tmp_path / "c.sqlite"
    store = ResponseCache(path, max_connections=2)
    b = CachedBackend(ScriptedBackend(lambda m: "ans:" + m[-1]["content"]), path)
    b.store.close()
    b.store = store
    errors, peak = [], []

    def worker(t: int) -> None:
        try:
            for i in range(40):
                assert b.complete(chat(f"p{(i * (t + 1)) % 50}")).text == f"ans:p{(i * (t + 1)) % 50}"
                peak.append(store.connections())
        except Exception as e:  # noqa: BLE001  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and max(peak) <= 2
    if os.path.isdir("/proc/self/fd"):
        assert _fds_on(path) <= 2
    assert len(store) == 50
    with pytest.raises(ValueError, match="max_connections"):
        ResponseCache(path, max_connections=0)


def test_close_closes_every_connection_and_the_cache_reopens(tmp_path):
    path = tmp_path / "c.sqlite"
    store = ResponseCache(path, max_connections=3)
    with store._connection() as borrowed:
        store.close()  # a borrowed connection is closed when it comes back
        assert store.connections() == 0
    with pytest.raises(sqlite3.ProgrammingError):
        borrowed.execute("SELECT 1")
    if os.path.isdir("/proc/self/fd"):
        assert _fds_on(path) == 0
    assert len(store) == 0 and store.connections() == 1  # used again: a fresh connection
    store.close()
    assert store.connections() == 0


def test_pickled_copy_opens_its_own_connections(tmp_path):
    path = tmp_path / "c.sqlite"
    b = CachedBackend(EchoBackend(), path)  # picklable, unlike a lambda
    b.store.close()
    b.store = ResponseCache(path, max_connections=2)
    assert not b.complete(chat("q")).cached
    b2 = pickle.loads(pickle.dumps(b))
    assert b2.store is not b.store and b2.store.max_connections == 2
    assert b2.complete(chat("q")).cached
    b.close()
    assert b2.complete(chat("q")).cached  # closing one copy leaves the other working
    b2.close()


def _child_uses_inherited_cache(b, q) -> None:
    try:
        q.put((b.complete(chat("from child")).text, b.complete(chat("q")).cached, b.store.connections()))
    except Exception as e:  # noqa: BLE001  # pragma: no cover - reported by the parent
        q.put(repr(e))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_forked_child_opens_its_own_connections(tmp_path):
    path = tmp_path / "c.sqlite"
    b = CachedBackend(ScriptedBackend(lambda m: "ans:" + m[-1]["content"]), path)
    b.complete(chat("q"))
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_uses_inherited_cache, args=(b, q))
    p.start()
    result = q.get(timeout=60)
    p.join(timeout=60)
    assert result == ("ans:from child", True, 1) and p.exitcode == 0
    assert b.complete(chat("from child")).cached  # the child's write, read through the parent's connections
    b.close()


@pytest.fixture(scope="module")
def recorded_cache(tmp_path_factory) -> bytes:
    """The bytes of a cache file holding 200 recorded calls (its WAL folded into the file)."""
    path = tmp_path_factory.mktemp("recorded") / "good.sqlite"
    live = CachedBackend(ScriptedBackend(["x" * 2_000]), path, mode="record")
    for i in range(200):
        live.complete(chat(f"q{i}"))
    live.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["garbage", "text", "half", "header_only", "one_page_short", "other_table"])
@pytest.mark.parametrize("mode", ["replay", "replay-or-record", "record"])
def test_a_damaged_cache_file_is_refused_when_opened_naming_the_file(tmp_path, recorded_cache, damage, mode):
    """Issue 25, item 8: a truncated or garbage cache file raised a raw sqlite3.DatabaseError (naming no file) at
    the first call, or mid-run. It is now refused when the cache is opened, in one line that names the file."""
    data = recorded_cache
    path = tmp_path / "calls.sqlite"
    if damage == "other_table":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE completions (id INTEGER, body TEXT)")
        conn.commit()
        conn.close()
    else:
        path.write_bytes({"garbage": bytes(range(256)) * 20, "text": b"not a database\n" * 100,
                          "half": data[: len(data) // 2], "header_only": data[:100],
                          "one_page_short": data[:-4096]}[damage])
    with pytest.raises(CacheFileError) as info:
        CachedBackend(ScriptedBackend(["never"]), path, mode=mode)
    message = str(info.value)
    assert repr(str(path)) in message and "not a usable cache file" in message and "\n" not in message
    assert isinstance(info.value, ValueError)  # the commands' usage errors: one line, exit 2


def test_a_sound_cache_file_is_accepted_at_every_size(tmp_path, recorded_cache):
    """The check refuses only damage: a fresh file, an empty one and a recorded one open and answer."""
    (tmp_path / "good.sqlite").write_bytes(recorded_cache)
    (tmp_path / "empty.sqlite").write_bytes(b"")
    for name in ("good.sqlite", "empty.sqlite", "new.sqlite"):
        c = CachedBackend(ScriptedBackend(["fresh"]), tmp_path / name, mode="replay-or-record")
        assert c.complete(chat("q7")).text == ("x" * 2_000 if name == "good.sqlite" else "fresh")
        c.close()


def test_replay_of_a_missing_file_is_refused_up_front(tmp_path):
    """Replay with a cache file that does not exist created its folder and failed every episode (replay misses);
    it is now refused when the backend is built, and nothing is created."""
    path = tmp_path / "nowhere" / "calls.sqlite"
    with pytest.raises(CacheFileError, match=r"does not exist.*replay.*Record it first"):
        CachedBackend(ScriptedBackend(["never"]), path, mode="replay")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("problem", ["garbage", "missing"])
def test_eval_refuses_a_bad_cache_in_one_line_with_exit_2(tmp_path, capsys, problem):
    """Every command opens its cache through llm_backends.from_settings, so every one refuses a bad cache file
    before the first episode (eval shown): exit 2 and one line naming the file, no traceback."""
    from promptr1.commands.cli import main

    cache = tmp_path / "calls.sqlite"
    if problem == "garbage":
        cache.write_bytes(b"\x00garbage" * 1_000)
    tasks = tmp_path / "qa.jsonl"
    tasks.write_text('{"question": "Say w", "answers": ["w"]}\n', encoding="utf-8")
    rc = main(["eval", str(tasks), "--methods", "direct", "--env-llm", "echo", "--output-dir", str(tmp_path / "out"),
               "--embedder", "hashing", "--chart", "false", "--cache", str(cache),
               *(["--cache-mode", "replay"] if problem == "missing" else [])])
    err = capsys.readouterr().err
    assert rc == 2 and str(cache) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_refused_cache_closes_the_env_llms_built_for_it(tmp_path, monkeypatch):
    """from_settings builds the clients before it opens the cache: when the cache is refused, every client it
    built is closed (one env LLM, and each of several) before the error goes up."""
    from promptr1.core.settings import BackendSettings
    from promptr1.llm_backends import assemble, specs

    closed: list[str] = []

    class Client(EchoBackend):
        def close(self) -> None:
            closed.append(self.spec)

    def make(spec, **kw):
        client = Client()
        client.spec = spec
        return client

    monkeypatch.setattr(specs, "make_backend", make)
    cache = tmp_path / "calls.sqlite"
    cache.write_bytes(b"garbage" * 1_000)
    with pytest.raises(CacheFileError):
        assemble.from_settings(BackendSettings(env_llm="echo", cache=str(cache)))
    assert closed == ["echo"]
    with pytest.raises(CacheFileError):
        assemble.from_settings(BackendSettings(env_models=["cheap=echo", "strong=echo"], cache=str(cache)))
    assert closed == ["echo", "echo"]  # the first of several was built, refused and closed; no second one was built
