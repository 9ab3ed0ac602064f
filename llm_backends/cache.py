"""Record and replay environment-LLM calls: a content-addressed cache on disk, for any backend.

:class:`CachedBackend` wraps any backend (``openai:...``, ``hf:...``, ``sim``, ...). Each call
is keyed by a SHA-256 of the backend name, the model, the messages, every sampling parameter
of the call (the backend's ``default_sampling`` merged under it; every keyword is kept, ``seed``,
``top_k``, ``repetition_penalty`` or anything else a caller passes, only ``None`` values are
dropped), and the backend's :meth:`~promptr1.llm_backends.base.BaseBackend.cache_identity`:
everything else that can change a reply, such as the server's base URL and extra request
fields of ``openai:``, the weights, dtype, chat template and default sampling of ``hf:``, or
the knowledge base of ``sim``. The reply and its token counts are stored in SQLite (WAL mode),
which is safe with many threads and processes writing at once.

Keys changed with issue 18: before, the identity was not part of the key, so replies recorded
against one server or setting were replayed for another. The identity enters the key only when
it is non-empty, so keys of backends without one (``scripted``, ``echo``, third-party backends)
are unchanged and their old cache files still answer; cache files recorded with ``openai:``,
``hf:``, ``smollm2`` or ``sim`` before that change miss (an honest ``replay_miss`` in replay
mode, a fresh call in ``replay-or-record``) and must be recorded again.

Connections are bounded: :class:`ResponseCache` keeps a small pool of SQLite connections
(``max_connections``, default 4) that every thread and event loop of a process shares, instead
of one connection per thread. Training, evaluation and validation each start a fresh
``asyncio.run`` whose executor threads die with it; with a connection per thread, every loop
left a few connections (two file descriptors each) open until ``close()``, and a long run
exhausted the descriptor limit (60 loops of 16 calls held 340 connections).

Modes:

====================  ========================================================================
``off``               pass every call through; the cache is not touched
``record``            call the backend every time and store (overwrite) the reply
``replay``            answer only from the cache; a miss raises ``EnvLLMError(kind="replay_miss")``
``replay-or-record``  answer from the cache; on a miss call the backend and store the reply
====================  ========================================================================

Failed calls (:class:`EnvLLMError`) are never stored. A hit returns the stored reply with
``cached=True``, ``attempts=0`` and ``cost_usd=0.0`` (the recorded cost and latency are in
``extra``). With sampling temperature > 0 a replay returns the *recorded* sample every time:
replay makes runs repeatable, it does not re-sample.

>>> import os, tempfile
>>> from promptr1.testing.scripted import ScriptedBackend
>>> path = os.path.join(tempfile.mkdtemp(), "calls.sqlite")
>>> live = CachedBackend(ScriptedBackend(["Paris"]), path, mode="record")
>>> live.complete([{"role": "user", "content": "Capital of France?"}], temperature=0.0).text
'Paris'
>>> offline = CachedBackend(ScriptedBackend(["never used"]), path, mode="replay")
>>> c = offline.complete([{"role": "user", "content": "Capital of France?"}], temperature=0.0)
>>> c.text, c.cached
('Paris', True)
>>> try:
...     offline.complete([{"role": "user", "content": "Capital of Spain?"}], temperature=0.0)
... except EnvLLMError as e:
...     print(e.kind)
replay_miss
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .base import BaseBackend, Completion, EnvLLMError, LLMBackend, Message, validate_messages

__all__ = ["CACHE_MODES", "CacheFileError", "CachedBackend", "ResponseCache", "cache_key"]

CACHE_MODES = ("off", "record", "replay", "replay-or-record")
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key               TEXT PRIMARY KEY,
    backend           TEXT NOT NULL,
    model             TEXT NOT NULL,
    request           TEXT NOT NULL,
    text              TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd          REAL,
    latency_s         REAL,
    response_model    TEXT,
    created           REAL NOT NULL
)
"""


_COLUMNS = ("key", "backend", "model", "request", "text", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s",
            "response_model", "created")


class CacheFileError(ValueError):
    """A response cache file that cannot be used: truncated, not SQLite, another program's database, or missing in
    replay mode. A ``ValueError``, so the commands report its one-line message and exit 2."""


def _json_default(obj: Any) -> Any:
    # numpy and torch scalars (``np.int64(3)``) are written as the number they hold, not their repr
    item = getattr(obj, "item", None)
    if callable(item) and getattr(obj, "ndim", None) == 0:
        try:
            return item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    return repr(obj)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def cache_key(backend: str, model: str, messages: Sequence[Message], sampling: Mapping[str, Any]) -> str:
    """The content address of one call: SHA-256 hex of its canonical JSON description.

    Sampling keys whose value is None are dropped (they mean "the default").

    >>> k = cache_key("openai", "m", [{"role": "user", "content": "hi"}], {"temperature": 0.0, "seed": 1})
    >>> len(k), k == cache_key("openai", "m", [{"role": "user", "content": "hi"}], {"seed": 1, "temperature": 0.0})
    (64, True)
    >>> k == cache_key("openai", "m", [{"role": "user", "content": "hi"}], {"temperature": 0.0, "seed": 2})
    False
    """
    return hashlib.sha256(_canonical(_request_record(backend, model, messages, sampling)).encode()).hexdigest()


def _request_record(backend: str, model: str, messages: Sequence[Message], sampling: Mapping[str, Any]) -> dict:
    return {
        "v": _SCHEMA_VERSION,
        "backend": backend,
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "sampling": {k: v for k, v in sorted(sampling.items()) if v is not None},
    }


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


#: Every live ResponseCache, so that a forked child can drop its parent's connections and locks.
_CACHES: weakref.WeakSet[ResponseCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_CACHES):
        cache._forget_parent_connections()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ResponseCache:
    """The SQLite store behind :class:`CachedBackend`: a small pool of connections shared by all threads.

    Every statement runs in autocommit mode; a write is one ``INSERT`` statement, so a crash never
    leaves a half-written row, and ``busy`` errors are retried.

    Connections. At most ``max_connections`` connections are open per process, whichever threads
    and event loops use the cache. An operation borrows an idle connection (the most recently
    used first, so a quiet cache keeps one open), opens a new one while fewer than
    ``max_connections`` exist, or else waits for one to come back; it returns it when done. A
    connection is only ever used by one thread at a time, so the pool is safe with the vector
    env's threads and ``asyncio.to_thread`` workers alike, and WAL mode lets the borrowed
    connections read while another writes. A connection per thread would not do: each
    ``asyncio.run`` brings new executor threads, and their connections would stay open.

    :meth:`close` closes the idle connections at once and the borrowed ones as they come back;
    a later call opens new ones. A forked child never touches its parent's connections (SQLite
    forbids carrying one across ``fork``): it starts with an empty pool. A pickled copy (e.g. in a
    spawned worker) opens its own.
    """

    def __init__(self, path: str | os.PathLike, *, timeout_s: float = 60.0, max_connections: int = 4,
                 check: bool = True) -> None:
        """``check``: read the whole file once now (SQLite's ``quick_check``, a fraction of a second for 200 MB) and
        refuse a truncated or garbage one with :class:`CacheFileError` naming it; a pickled copy skips it."""
        if int(max_connections) < 1:
            raise ValueError(f"max_connections must be >= 1 (the connections kept open per process); "
                             f"got {max_connections}.")
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self.timeout_s = float(timeout_s)
        self.max_connections = int(max_connections)
        self._cond = threading.Condition()
        self._idle: list[sqlite3.Connection] = []  # open and not borrowed, most recently returned last
        self._open = 0  # connections of this pool generation, idle or borrowed (and being opened)
        self._generation = 0  # bumped by close() and fork: older connections are closed or dropped on return
        self._pid = os.getpid()
        _CACHES.add(self)
        try:  # create the file and table now, so errors surface early
            self._retry(self._check if check else (lambda conn: None))
        except CacheFileError:
            self.close()
            raise
        except sqlite3.DatabaseError as e:
            self.close()
            if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
                raise
            raise CacheFileError(self._unusable(str(e))) from None

    def _unusable(self, why: str) -> str:
        return (f"the response cache {self.path!r} is not a usable cache file ({why}): it may be truncated, damaged "
                "or another program's file. Give another cache path (--cache), or move this file away to record anew.")

    def _check(self, conn: sqlite3.Connection) -> None:
        """Refuse a damaged file or another program's table (see ``check`` in :meth:`__init__`)."""
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            raise CacheFileError(self._unusable("SQLite's quick_check: " + "; ".join(map(str, problems))))
        columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(completions)").fetchall())
        if columns != _COLUMNS:
            raise CacheFileError(self._unusable(f"its completions table has the columns {list(columns)}"))

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "timeout_s": self.timeout_s, "max_connections": self.max_connections}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], timeout_s=state["timeout_s"], max_connections=state.get("max_connections", 4),
                      check=False)  # the original checked the file

    def __repr__(self) -> str:
        return f"ResponseCache({self.path!r})"

    # --- the pool -----------------------------------------------------------------------------
    def _open_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _forget_parent_connections(self) -> None:
        """In a forked child: drop (never close, never use) the parent's connections; start a fresh pool."""
        self._cond = threading.Condition()  # the parent's lock may have been held by a thread that is not here
        self._idle = []
        self._open = 0
        self._generation += 1
        self._pid = os.getpid()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a connection for one operation (see the class docstring)."""
        if self._pid != os.getpid():  # forked without os.register_at_fork (or before it ran)
            self._forget_parent_connections()
        wait_s = 2 * self.timeout_s + 10.0  # a borrower holds one for at most one statement and its busy wait
        deadline = time.monotonic() + wait_s
        conn = None
        with self._cond:
            while True:
                if self._idle:
                    conn = self._idle.pop()
                    break
                if self._open < self.max_connections:
                    self._open += 1  # reserve the slot; open it outside the lock
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no free connection to the response cache {self.path!r} after {wait_s:.0f} s: all "
                        f"{self.max_connections} are in use. Another process may hold the database lock; "
                        "otherwise raise ResponseCache(max_connections=...)."
                    )
                self._cond.wait(remaining)
            generation = self._generation
        if conn is None:
            try:
                conn = self._open_connection()
            except BaseException:
                with self._cond:
                    if generation == self._generation:
                        self._open -= 1
                    self._cond.notify()
                raise
        try:
            yield conn
        finally:
            with self._cond:
                if generation == self._generation:
                    self._idle.append(conn)
                    self._cond.notify()
                    conn = None
            if conn is not None and self._pid == os.getpid():
                conn.close()  # closed (or reset) while borrowed

    def connections(self) -> int:
        """How many connections this process has open (idle or borrowed); never above ``max_connections``."""
        with self._cond:
            return self._open

    def _retry(self, fn, tries: int = 20):
        """``fn(connection)`` on a borrowed connection, retried with backoff while the database is busy."""
        delay = 0.01
        for i in range(tries):
            try:
                with self._connection() as conn:
                    return fn(conn)
            except sqlite3.OperationalError as e:
                if not _is_busy(e) or i == tries - 1:
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    # --- rows ---------------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """The stored row for ``key`` as a dict, or None."""

        def q(conn: sqlite3.Connection):
            cur = conn.execute(
                "SELECT text, prompt_tokens, completion_tokens, cost_usd, latency_s, response_model, created "
                "FROM completions WHERE key = ?",
                (key,),
            )
            return cur.fetchone()

        row = self._retry(q)
        if row is None:
            return None
        names = ("text", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s", "response_model", "created")
        return dict(zip(names, row))

    def put(self, key: str, request: Mapping[str, Any], completion: Completion, *, replace: bool) -> bool:
        """Store ``completion`` under ``key``; with ``replace=False`` an existing row wins.

        Returns True when a row was written.
        """
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        row = (
            key, str(request.get("backend", "")), str(request.get("model", "")), _canonical(request),
            completion.text, int(completion.prompt_tokens), int(completion.completion_tokens),
            completion.cost_usd, float(completion.latency_s), completion.model or None, time.time(),
        )

        def w(conn: sqlite3.Connection):
            cur = conn.execute(f"{verb} INTO completions VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
            return cur.rowcount > 0

        return bool(self._retry(w))

    def __len__(self) -> int:
        return int(self._retry(lambda conn: conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]))

    def requests(self) -> list[dict[str, Any]]:
        """Every stored request description (for inspection)."""
        rows = self._retry(lambda conn: conn.execute("SELECT request FROM completions ORDER BY created").fetchall())
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        """Close every connection: the idle ones now, borrowed ones when they are returned."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._open = 0
            self._generation += 1
            mine = self._pid == os.getpid()
        if mine:
            for c in idle:
                c.close()


def _model_name(inner: Any) -> str:
    """The model name for keys and messages: ``model_id`` when the backend has one, else a string ``model``.

    ``hf:`` backends keep the loaded torch module in ``model``; its repr is no name.
    """
    for attr in ("model_id", "model"):
        value = getattr(inner, attr, None)
        if isinstance(value, str) and value:
            return value
    return ""


def _normalize_mode(mode: str) -> str:
    m = str(mode).strip().lower().replace("_", "-")
    if m not in CACHE_MODES:
        raise ValueError(f"cache mode must be one of {', '.join(CACHE_MODES)}; got {mode!r}.")
    return m


class CachedBackend(BaseBackend):
    """Wrap ``inner`` with a record/replay cache at ``path`` (see the module docstring for modes).

    ``name`` and ``model`` are the inner backend's, so the wrapper is transparent to the env.
    ``namespace`` is mixed into every key, to keep unrelated experiments apart in one file.
    """

    def __init__(
        self,
        inner: LLMBackend,
        path: str | os.PathLike,
        mode: str = "replay-or-record",
        *,
        namespace: str = "",
    ) -> None:
        super().__init__()
        if not (hasattr(inner, "complete") and hasattr(inner, "acomplete")):
            raise TypeError(f"CachedBackend wraps an LLMBackend (name/complete/acomplete); got {type(inner).__name__}.")
        self.inner = inner
        self.mode = _normalize_mode(mode)
        self.namespace = namespace
        self.path = os.fspath(path)
        self.name = getattr(inner, "name", type(inner).__name__)
        self.model = _model_name(inner)
        self.deterministic = self.mode == "replay" or bool(getattr(inner, "deterministic", False))
        if self.mode == "replay" and not os.path.isfile(self.path):
            raise CacheFileError(
                f"the response cache {self.path!r} does not exist, and mode 'replay' answers only from it. Record it "
                "first (--cache-mode record or replay-or-record), or give the recorded file's path (--cache).")
        self.store = ResponseCache(self.path) if self.mode != "off" else None
        self._stats_lock = threading.Lock()
        self._stats: Counter = Counter()

    # A copy (e.g. in a subprocess worker) opens its own connections and counts its own calls.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_loop_thread", "_loop_lock", "_stats_lock", "_stats")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._loop_thread = None
        self._loop_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats = Counter()

    def __repr__(self) -> str:
        return f"CachedBackend({self.inner!r}, path={self.path!r}, mode={self.mode!r})"

    def __getattr__(self, item: str) -> Any:
        # Delegate e.g. stats helpers of the inner backend; never called for our own attributes.
        if item.startswith("_") or item in ("inner",):
            raise AttributeError(item)
        return getattr(self.inner, item)

    # --- keys ---------------------------------------------------------------------------------
    def cache_identity(self) -> dict[str, Any]:
        """The inner backend's :meth:`~promptr1.llm_backends.base.BaseBackend.cache_identity` (``{}`` without one).

        Asked on every call, so a setting changed after construction (e.g. ``extra_body``) still counts.
        """
        fn = getattr(self.inner, "cache_identity", None)  # through wrappers such as BudgetedBackend too
        if fn is None:
            return {}
        identity = fn()
        if not isinstance(identity, Mapping):
            raise TypeError(
                f"{type(self.inner).__name__}.cache_identity() must return a dict of what besides the messages and "
                f"sampling can change a reply (JSON-safe, {{}} when nothing); got {type(identity).__name__}."
            )
        return dict(identity)

    def key_for(self, messages: Sequence[Message], sampling: Mapping[str, Any]) -> tuple[str, dict]:
        """``(key, request description)`` for one call.

        The description holds the backend name and model, the messages, the call's sampling with the inner
        backend's ``default_sampling`` merged under it (every keyword, only ``None`` values dropped), the inner
        backend's :meth:`cache_identity` under ``identity`` and the ``namespace``; the last two only when
        non-empty, so that keys of backends without an identity are the same as before they existed.
        """
        merged = {**dict(getattr(self.inner, "default_sampling", None) or {}), **sampling}
        req = _request_record(self.name, self.model, messages, merged)
        identity = self.cache_identity()
        if identity:
            req["identity"] = json.loads(_canonical(identity))  # as stored and hashed: plain JSON
        if self.namespace:
            req["namespace"] = self.namespace
        return hashlib.sha256(_canonical(req).encode()).hexdigest(), req

    # --- calls --------------------------------------------------------------------------------
    def _count(self, **kw: int) -> None:
        with self._stats_lock:
            self._stats.update(kw)

    def _hit(self, row: Mapping[str, Any], key: str, t0: float) -> Completion:
        self._count(hits=1)
        return Completion(
            text=row["text"],
            latency_s=time.monotonic() - t0,
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            cost_usd=0.0,
            attempts=0,
            cached=True,
            model=row["response_model"] or self.model,
            extra={"cache_key": key, "recorded_latency_s": row["latency_s"], "recorded_cost_usd": row["cost_usd"]},
        )

    def _miss_error(self, key: str) -> EnvLLMError:
        self._count(replay_misses=1)
        return EnvLLMError(
            f"replay miss: no recorded reply for this request in {self.path!r} (key {key[:16]}..., backend "
            f"{self.name!r}, model {self.model!r}). Record it first with mode='record' or 'replay-or-record', "
            "or check that the messages and sampling parameters match the recorded run.",
            kind="replay_miss",
            attempts=0,
        )

    def _stored(self, c: Completion, key: str) -> Completion:
        return dataclasses.replace(c, extra={**dict(c.extra), "cache_key": key})

    def complete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        msgs = validate_messages(messages)
        if self.mode == "off":
            return self.inner.complete(msgs, **sampling)
        t0 = time.monotonic()
        key, req = self.key_for(msgs, sampling)
        if self.mode != "record":
            row = self.store.get(key)
            if row is not None:
                return self._hit(row, key, t0)
            if self.mode == "replay":
                raise self._miss_error(key)
        self._count(misses=1)
        c = self.inner.complete(msgs, **sampling)
        if self.store.put(key, req, c, replace=self.mode == "record"):
            self._count(writes=1)
        return self._stored(c, key)

    async def acomplete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        msgs = validate_messages(messages)
        if self.mode == "off":
            return await self.inner.acomplete(msgs, **sampling)
        t0 = time.monotonic()
        key, req = self.key_for(msgs, sampling)
        if self.mode != "record":
            row = await asyncio.to_thread(self.store.get, key)
            if row is not None:
                return self._hit(row, key, t0)
            if self.mode == "replay":
                raise self._miss_error(key)
        self._count(misses=1)
        c = await self.inner.acomplete(msgs, **sampling)
        if await asyncio.to_thread(self.store.put, key, req, c, replace=self.mode == "record"):
            self._count(writes=1)
        return self._stored(c, key)

    def stats(self) -> dict[str, Any]:
        """``hits``, ``misses`` (calls that went to the inner backend), ``writes``, ``replay_misses``,
        plus the inner backend's ``stats()`` under ``inner`` when it has one."""
        with self._stats_lock:
            out: dict[str, Any] = {k: self._stats.get(k, 0) for k in ("hits", "misses", "writes", "replay_misses")}
        inner_stats = getattr(self.inner, "stats", None)
        if callable(inner_stats):
            out["inner"] = inner_stats()
        return out

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
        super().close()
