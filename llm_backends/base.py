"""The contract every environment LLM ("the large LLM") satisfies.

A backend turns a chat (a list of ``{"role": ..., "content": ...}`` messages) into a
:class:`Completion`. It offers the call both synchronously (:meth:`LLMBackend.complete`,
used by ``PromptCollabEnv.step``) and asynchronously (:meth:`LLMBackend.acomplete`, used by
the vector env so that many episodes wait on the network at once).

A backend that cannot produce a reply raises :class:`EnvLLMError` (after its own retries).
The environment turns that into ``info["env_error"]``; the error text never reaches the
agent as if the large LLM had said it (docs/architecture.md, environment errors).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = Mapping[str, str]

__all__ = [
    "ATTEMPT_BILLING",
    "BaseBackend",
    "Completion",
    "EnvLLMError",
    "LLMBackend",
    "Message",
    "error_summary",
    "failed_attempt",
    "validate_messages",
]


@dataclass(frozen=True)
class Completion:
    """One reply of the environment LLM, with what it cost.

    ``latency_s`` is wall time including retries; ``attempts`` counts calls made
    (1 means no retry); ``cached`` is True when the reply came from a record/replay cache.
    """

    text: str
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    attempts: int = 1
    cached: bool = False
    model: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


class EnvLLMError(RuntimeError):
    """The environment LLM failed to produce a usable reply.

    ``kind`` is a short machine-readable reason (``"timeout"``, ``"rate_limit"``,
    ``"server_error"``, ``"connection"``, ``"empty_reply"``, ``"malformed_reply"``, ``"bad_request"``,
    ``"deadline"``, ``"replay_miss"``, ``"max_tokens"`` (an empty reply cut by ``max_tokens``), ``"response_too_large"``,
    ``"budget"``, ``"error"``); ``attempts`` is how many calls were made.

    ``prompt_tokens``, ``completion_tokens`` and ``cost_usd`` add up what the failed attempts were billed for
    (servers report usage on a reply they then fail, e.g. an empty reply cut by ``max_tokens``); a budget counts
    them like a successful call's.
    """

    def __init__(self, message: str, *, kind: str = "error", attempts: int = 1, retryable: bool = False,
                 prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0):
        super().__init__(message)
        self.kind = kind
        self.attempts = attempts
        self.retryable = retryable
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cost_usd = cost_usd

    def __reduce__(self):  # keep kind/attempts/usage across pickling (vector env workers)
        return (_rebuild_env_llm_error, (str(self), self.kind, self.attempts, self.retryable, self.prompt_tokens,
                                         self.completion_tokens, self.cost_usd))


def _rebuild_env_llm_error(message: str, kind: str, attempts: int, retryable: bool, prompt_tokens: int = 0,
                           completion_tokens: int = 0, cost_usd: float = 0.0) -> EnvLLMError:
    return EnvLLMError(message, kind=kind, attempts=attempts, retryable=retryable, prompt_tokens=prompt_tokens,
                       completion_tokens=completion_tokens, cost_usd=cost_usd)


#: Set by whoever pays for a call (a budget, around the call) and read by a backend that retries: after every
#: failed attempt it calls ``hook(prompt_tokens, completion_tokens, cost_usd)`` with what that attempt was
#: billed for (zeros when nothing), and gives up instead of retrying when the hook returns a reason (a str).
#: See :func:`failed_attempt`.
AttemptHook = Callable[[int, int, float], "str | None"]
ATTEMPT_BILLING: contextvars.ContextVar[AttemptHook | None] = contextvars.ContextVar(
    "promptr1_attempt_billing", default=None)


def failed_attempt(prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0) -> str | None:
    """Report one failed attempt of the current call and what it was billed for; returns why no retry may
    follow (e.g. ``"max_cost=$2 reached"``), or None to go on. A backend that retries calls it after every
    failed attempt.

    >>> failed_attempt(40, 612, 0.25) is None  # nobody is counting
    True
    """
    hook = ATTEMPT_BILLING.get()
    return None if hook is None else hook(int(prompt_tokens), int(completion_tokens), float(cost_usd or 0.0))


def error_summary(env_errors: Iterable[str], *, most: int = 2) -> str:
    """Episodes' env errors (``"kind: message"``) grouped by kind, most frequent first: each kind's count and
    its latest message, whole (messages of one kind differ in seconds, ports and counts, so their text never
    groups).

    >>> print(error_summary(["timeout: no reply in 1.02 s", "timeout: no reply in 0.98 s",
    ...                      "connection: refused"]))
    2 x timeout (last: 'timeout: no reply in 0.98 s'); 1 x connection (last: 'connection: refused')
    """
    counts: Counter[str] = Counter()
    last: dict[str, str] = {}
    for text in env_errors:
        kind = str(text).partition(":")[0].strip() or "error"
        counts[kind] += 1
        last[kind] = str(text)
    return "; ".join(f"{n} x {kind} (last: {last[kind]!r})" for kind, n in counts.most_common(most))


@runtime_checkable
class LLMBackend(Protocol):
    """Anything with a ``name`` and sync/async ``complete(messages, **sampling)``.

    Sampling keywords understood by the bundled backends: ``temperature``, ``top_p``,
    ``max_tokens``, ``seed``. Unknown keywords are ignored by simple backends.
    """

    name: str

    def complete(self, messages: Sequence[Message], **sampling: Any) -> Completion: ...

    async def acomplete(self, messages: Sequence[Message], **sampling: Any) -> Completion: ...


def validate_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Check a chat and return it as a list of plain dicts.

    >>> validate_messages([{"role": "user", "content": "hi"}])
    [{'role': 'user', 'content': 'hi'}]
    >>> validate_messages([{"role": "robot", "content": "hi"}])
    Traceback (most recent call last):
    ...
    ValueError: message 0 has role 'robot'; expected one of system, user, assistant. Fix the chat before calling the backend.
    """
    out: list[dict[str, str]] = []
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}."
        )
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a mapping with 'role' and 'content' keys, got {m!r}.")
        role, content = m["role"], m["content"]
        if role not in ("system", "user", "assistant"):
            raise ValueError(
                f"message {i} has role {role!r}; expected one of system, user, assistant. "
                "Fix the chat before calling the backend."
            )
        if not isinstance(content, str):
            raise TypeError(f"message {i} content must be str, got {type(content).__name__}.")
        out.append({"role": role, "content": content})
    return out


class LoopThread:
    """A private event loop on a daemon thread, for running coroutines from sync code.

    Async clients (httpx, openai) bind to the loop they were first used on, so the sync
    path of an async-native backend must always use the same loop.
    """

    def __init__(self, name: str = "promptr1-backend-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro) -> "concurrent.futures.Future":
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro):
        return self.submit(coro).result()

    def stop(self, join_timeout: float | None = None) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if join_timeout is not None:
            self._thread.join(timeout=join_timeout)


class BaseBackend:
    """Convenience base: implement either :meth:`complete` or :meth:`acomplete`.

    * A sync-native backend implements ``complete``; ``acomplete`` runs it in a worker
      thread so the event loop keeps serving other episodes.
    * An async-native backend implements ``acomplete``; ``complete`` runs it on one private
      event loop owned by the backend (safe to call from inside a running loop's thread pool).
    """

    name: str = "base"
    #: True when the same messages and sampling always give the same reply.
    deterministic: bool = False

    def __init__(self) -> None:
        self._loop_thread: LoopThread | None = None
        self._loop_lock = threading.Lock()

    def complete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        if type(self).acomplete is BaseBackend.acomplete:
            raise TypeError(f"{type(self).__name__} must implement complete() or acomplete().")
        with self._loop_lock:
            if getattr(self, "_loop_thread", None) is None:
                self._loop_thread = LoopThread()
        return self._loop_thread.run(self.acomplete(messages, **sampling))

    async def acomplete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        if type(self).complete is BaseBackend.complete:
            raise TypeError(f"{type(self).__name__} must implement complete() or acomplete().")
        return await asyncio.to_thread(self.complete, messages, **sampling)

    def __getstate__(self) -> dict[str, Any]:
        # Locks and the private loop thread are process-local: a pickled backend (e.g. sent to a
        # subprocess vector-env worker) gets fresh ones.
        state = self.__dict__.copy()
        state.pop("_loop_thread", None)
        state.pop("_loop_lock", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._loop_thread = None
        self._loop_lock = threading.Lock()
        if "_lock" not in state and hasattr(type(self), "_needs_lock"):
            self._lock = threading.Lock()

    def cache_identity(self) -> dict[str, Any]:
        """Everything besides the messages and the call's sampling that can change a reply (JSON-safe).

        A response cache mixes it into every key, so replies recorded against one server or setting are never
        replayed for another. Backends override it (e.g. ``openai:`` returns its base URL and extra request
        fields); it must never contain a secret.
        """
        return {}

    def close(self) -> None:
        lt = getattr(self, "_loop_thread", None)
        if lt is not None:
            lt.stop()
            self._loop_thread = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
