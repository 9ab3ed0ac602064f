"""One limiter shared by every episode that talks to the same environment LLM.

:class:`SharedLimiter` bounds three things at once:

* **concurrency** -- at most ``max_concurrency`` requests in flight;
* **requests per minute** (``rpm``) -- a token bucket refilled at ``rpm / 60`` per second;
* **tokens per minute** (``tpm``) -- a token bucket refilled at ``tpm / 60`` tokens per second,
  charged with an estimate before the request and corrected with the real usage after it.

Both buckets hold ``burst_s`` seconds' worth of refill (at least one request), so the
limits are smooth: a server that enforces ``rpm`` over sub-minute windows (as OpenAI
does) is not hit by a minute's worth of requests in one burst.

Every primitive here is thread-safe and works from *any* event loop: waiting tasks are
woken with ``loop.call_soon_threadsafe`` and the buckets hand out reservations under a
``threading.Lock``. That is why this module does not use ``aiolimiter`` or
``asyncio.Semaphore``, which bind to the first loop that uses them: one limiter must be
shared by backends (and sync callers) living on different loops and threads.

>>> import asyncio
>>> lim = SharedLimiter(max_concurrency=2)
>>> async def one():
...     async with lim.slot():
...         await asyncio.sleep(0.01)
>>> async def main():
...     await asyncio.gather(*(one() for _ in range(6)))
>>> asyncio.run(main())
>>> lim.stats()["max_in_flight"]
2
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CrossLoopSemaphore", "SharedLimiter", "TokenBucket", "estimate_tokens"]


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (about 4 characters per token, at least 1 for non-empty text).

    >>> estimate_tokens("")
    0
    >>> estimate_tokens("abcd")
    1
    >>> estimate_tokens("a" * 10)
    3
    """
    return 0 if not text else max(1, (len(text) + 3) // 4)


class TokenBucket:
    """A thread-safe token bucket that hands out *reservations*.

    ``reserve(amount)`` takes ``amount`` from the bucket at once (the level may go
    negative, which is debt) and returns how long the caller must wait before using it.
    Reservations are served in the order they were made, so waiting is FIFO-fair, and in
    any window of ``w`` seconds at most ``capacity + rate * w`` units are used.

    >>> b = TokenBucket(rate_per_s=10.0, capacity=2.0, clock=lambda: 0.0)
    >>> [round(b.reserve(1), 3) for _ in range(4)]
    [0.0, 0.0, 0.1, 0.2]
    >>> b.refund(1)                      # a waiter gave up: the next one waits less
    >>> round(b.reserve(1), 3)
    0.2
    """

    def __init__(self, rate_per_s: float, capacity: float, *, clock=time.monotonic) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s!r}.")
        if not capacity > 0:
            raise ValueError(f"capacity must be > 0, got {capacity!r}.")
        self.rate = float(rate_per_s)
        self.capacity = float(capacity)
        self._clock = clock
        self._level = float(capacity)
        self._t = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._t) * self.rate)
        self._t = now

    def reserve(self, amount: float) -> float:
        """Take ``amount`` now; return the seconds to wait before it may be used."""
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount!r}.")
        with self._lock:
            self._refill()
            self._level -= amount
            return 0.0 if self._level >= 0 else -self._level / self.rate

    def refund(self, amount: float) -> None:
        """Give back ``amount`` (negative ``amount`` charges more, e.g. real usage above the estimate)."""
        with self._lock:
            self._refill()
            self._level = min(self.capacity, self._level + amount)

    @property
    def level(self) -> float:
        with self._lock:
            self._refill()
            return self._level


@dataclass
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    granted: bool = False


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class CrossLoopSemaphore:
    """A FIFO semaphore usable from several event loops and threads at once.

    The permit count lives under a ``threading.Lock``; a waiter parks on a future of its
    own loop, and ``release`` hands the permit directly to the first waiter (``granted``
    is decided under the lock, so a waiter cancelled at the same moment gives the permit
    back instead of losing it).
    """

    def __init__(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {value!r}.")
        self._value = int(value)
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._value > 0 and not self._waiters:
                self._value -= 1
                return
            waiter = _Waiter(loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                if waiter.granted:
                    give_back = True
                else:
                    give_back = False
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:  # pragma: no cover - removed concurrently
                        pass
            if give_back:
                self.release()
            raise

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if waiter.future.done():  # cancelled while parked
                    continue
                waiter.granted = True
                try:
                    waiter.loop.call_soon_threadsafe(_wake, waiter.future)
                except RuntimeError:  # its loop is closed: nobody will take the permit
                    waiter.granted = False
                    continue
                return
            self._value += 1

    @property
    def available(self) -> int:
        with self._lock:
            return self._value

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)


class SharedLimiter:
    """Concurrency, requests-per-minute and tokens-per-minute limits, shared across loops.

    Use one instance for every episode (and every backend) that shares a quota::

        limiter = SharedLimiter(max_concurrency=8, rpm=500, tpm=200_000)
        async with limiter.slot(tokens=estimated) as slot:
            reply = await call_server()
            slot.report_tokens(reply.total_tokens)

    The order is: wait for a concurrency slot, then for the rate buckets (holding the
    slot), then fire. Waiting for rate *inside* the slot means requests leave at the
    bucket's pace, never in a burst of held-back requests.

    ``burst_s`` is how many seconds of refill each bucket can hold (default 1 s).
    ``rpm`` and ``tpm`` of ``None`` mean unlimited.

    ``clock`` and ``sleep`` are where the limiter's time is decided: the buckets read ``clock()`` and a request held
    back waits with ``await sleep(seconds)``. The defaults are ``time.monotonic`` and ``asyncio.sleep``; a test
    passes a virtual clock whose ``sleep`` advances it, so the pacing it checks does not depend on how busy the
    machine is. A pickled copy uses the defaults.
    """

    def __init__(
        self,
        max_concurrency: int = 32,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        for name, v in (("rpm", rpm), ("tpm", tpm)):
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be a positive number or None (no limit), got {v!r}.")
        if not burst_s > 0:
            raise ValueError(f"burst_s must be > 0, got {burst_s!r}.")
        self.max_concurrency = int(max_concurrency)
        self.rpm = rpm
        self.tpm = tpm
        self.burst_s = float(burst_s)
        self.clock = clock
        self.sleep = sleep
        self._init_state()

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._sem = CrossLoopSemaphore(self.max_concurrency)
        clock = getattr(self, "clock", time.monotonic)
        self._req_bucket = (
            TokenBucket(self.rpm / 60.0, max(1.0, self.rpm / 60.0 * self.burst_s), clock=clock) if self.rpm else None
        )
        self._tok_bucket = (
            TokenBucket(self.tpm / 60.0, max(1.0, self.tpm / 60.0 * self.burst_s), clock=clock) if self.tpm else None
        )
        self._stats_lock = threading.Lock()
        self._in_flight = 0
        self._max_in_flight = 0
        self._acquired = 0
        self._rate_wait_s = 0.0

    # A limiter travels to subprocess workers as its configuration; each process then limits itself.
    def __getstate__(self) -> dict[str, Any]:
        return {"max_concurrency": self.max_concurrency, "rpm": self.rpm, "tpm": self.tpm, "burst_s": self.burst_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.clock, self.sleep = time.monotonic, asyncio.sleep
        self._init_state()

    def __repr__(self) -> str:
        return (
            f"SharedLimiter(max_concurrency={self.max_concurrency}, rpm={self.rpm}, tpm={self.tpm}, "
            f"burst_s={self.burst_s})"
        )

    async def _wait_bucket(self, bucket: TokenBucket, amount: float) -> None:
        delay = bucket.reserve(amount)
        if delay > 0:
            try:
                await self.sleep(delay)
            except BaseException:
                bucket.refund(amount)
                raise
            with self._stats_lock:
                self._rate_wait_s += delay

    def slot(self, tokens: int = 0) -> _Slot:
        """Wait until one request of about ``tokens`` tokens may go; hold a concurrency slot meanwhile.

        Use as ``async with limiter.slot(tokens) as slot:`` (a plain class, not an async generator:
        it is entered once per request, hundreds of times a second).
        """
        return _Slot(self, tokens)

    async def _enter(self, tokens: int) -> int:
        """Take a concurrency permit and wait for the rate buckets; returns the tokens charged."""
        if self._pid != os.getpid():  # a forked child: the parent's permits and waiters are not ours
            self._init_state()
        await self._sem.acquire()
        try:
            if self._req_bucket is not None:
                await self._wait_bucket(self._req_bucket, 1.0)
            charged = 0
            if self._tok_bucket is not None and tokens > 0:
                await self._wait_bucket(self._tok_bucket, float(tokens))
                charged = tokens
        except BaseException:
            self._sem.release()
            raise
        with self._stats_lock:
            self._in_flight += 1
            self._acquired += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        return charged

    def _exit(self) -> None:
        with self._stats_lock:
            self._in_flight -= 1
        self._sem.release()

    def stats(self) -> dict[str, float]:
        """Counters: ``in_flight``, ``max_in_flight``, ``waiting``, ``acquired``, ``rate_wait_s``."""
        with self._stats_lock:
            return {
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "waiting": self._sem.waiting,
                "acquired": self._acquired,
                "rate_wait_s": self._rate_wait_s,
            }


class _Slot:
    """One admitted request (``async with limiter.slot(tokens) as slot``); report the real token
    usage with :meth:`report_tokens` to correct the tpm bucket."""

    __slots__ = ("_limiter", "_tokens", "charged")

    def __init__(self, limiter: SharedLimiter, tokens: int) -> None:
        self._limiter = limiter
        self._tokens = tokens
        self.charged = 0

    async def __aenter__(self) -> _Slot:
        self.charged = await self._limiter._enter(self._tokens)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._limiter._exit()

    def report_tokens(self, actual: int) -> None:
        bucket = self._limiter._tok_bucket
        if bucket is not None and actual >= 0:
            bucket.refund(self.charged - actual)
            self.charged = actual
