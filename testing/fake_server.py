"""A loopback OpenAI-compatible server with injectable latency and faults, for tests and benchmarks.

Real HTTP/1.1 (keep-alive) on ``127.0.0.1`` with an OS-chosen port, served by a small
``asyncio.Protocol`` on a background thread with its own event loop; standard library
only. Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

>>> import json, urllib.request
>>> with FakeOpenAIServer() as srv:
...     req = urllib.request.Request(srv.base_url + "/chat/completions", method="POST",
...         data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi there"}]}).encode(),
...         headers={"Content-Type": "application/json"})
...     body = json.load(urllib.request.urlopen(req))
...     stats = srv.stats()
>>> body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]
('hi there', 2)
>>> stats["requests"], stats["max_in_flight"]
(1, 1)

Faults (one per request, by ``schedule`` or with probability ``fault_rate``):

============  ====================================================================
``"429"``     HTTP 429 with ``Retry-After: <retry_after_s>``
``"500"``     HTTP 500 (also ``"502"``, ``"503"``, ``"504"``, ``"400"``, ``"401"``, ``"404"``)
``"hang"``    never answers (until the client disconnects or ``hang_s`` passes)
``"drop"``    closes the connection without a response
``"empty"``   HTTP 200 with ``"choices": []``
``"emptytext"`` HTTP 200 with an empty message content
``"badjson"`` HTTP 200 whose body is not valid JSON
``"lengthcut"`` HTTP 200 with empty content, ``finish_reason: "length"`` and ``usage`` billing
              ``max_tokens`` completion tokens (a model that spent its budget before answering)
``"oversized"`` HTTP 200, a valid reply padded to ``oversize_bytes`` (with ``Content-Length``)
``"oversized_chunked"`` the same body sent ``Transfer-Encoding: chunked`` (no length up front)
``"oversized_gzip"`` the same body gzip-compressed (``Content-Encoding: gzip``): small on the wire
============  ====================================================================

Latency (per request, seeded): a number of seconds, or one of :func:`constant`,
:func:`uniform`, :func:`lognormal`, or any ``callable(random.Random) -> seconds``.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FAULTS",
    "FakeOpenAIServer",
    "RequestRecord",
    "constant",
    "echo_reply",
    "lognormal",
    "uniform",
]

FAULTS = ("429", "400", "401", "404", "500", "502", "503", "504", "hang", "drop", "empty", "emptytext", "badjson",
          "lengthcut", "oversized", "oversized_chunked", "oversized_gzip")
#: Completion tokens a ``"lengthcut"`` reply bills when the request has no ``max_tokens``.
LENGTHCUT_DEFAULT_TOKENS = 612
_STATUS_TEXT = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
    411: "Length Required", 413: "Payload Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 32 * 1024 * 1024

LatencyFn = Callable[[random.Random], float]
ReplyFn = Callable[[list[dict[str, Any]], dict[str, Any]], str]
FaultFn = Callable[[int, dict[str, Any]], "str | None"]


# ---------------------------------------------------------------------------------------------
# latency distributions
# ---------------------------------------------------------------------------------------------
def constant(seconds: float) -> LatencyFn:
    """Always ``seconds``.

    >>> constant(0.25)(random.Random(0))
    0.25
    """
    s = float(seconds)
    return lambda rng: s


def uniform(low_s: float, high_s: float) -> LatencyFn:
    """Uniform in ``[low_s, high_s]``.

    >>> 0.1 <= uniform(0.1, 0.2)(random.Random(0)) <= 0.2
    True
    """
    return lambda rng: rng.uniform(low_s, high_s)


def lognormal(median_s: float, sigma: float = 1.0, cap_s: float | None = None) -> LatencyFn:
    """A long-tailed latency: ``median_s * exp(sigma * N(0, 1))``, optionally capped at ``cap_s``.

    >>> xs = sorted(lognormal(0.1, 1.0)(random.Random(i)) for i in range(2001))
    >>> 0.08 < xs[1000] < 0.12          # the median is about median_s
    True
    >>> xs[-20] > 0.5                   # ... with a long right tail
    True
    """

    def draw(rng: random.Random) -> float:
        x = median_s * math.exp(sigma * rng.gauss(0.0, 1.0))
        return min(x, cap_s) if cap_s is not None else x

    return draw


def _as_latency(latency: float | LatencyFn | None) -> LatencyFn | None:
    if latency is None:
        return None
    if callable(latency):
        return latency
    if float(latency) < 0:
        raise ValueError(f"latency must be >= 0 seconds or a callable(rng) -> seconds, got {latency!r}.")
    return None if float(latency) == 0 else constant(float(latency))


# ---------------------------------------------------------------------------------------------
# replies
# ---------------------------------------------------------------------------------------------
def echo_reply(messages: list[dict[str, Any]], body: Mapping[str, Any]) -> str:
    """The default reply: the content of the last user message, unchanged.

    >>> echo_reply([{"role": "system", "content": "s"}, {"role": "user", "content": "2+2?"}], {})
    '2+2?'
    """
    for m in reversed(messages):
        if isinstance(m, Mapping) and m.get("role") == "user":
            c = m.get("content", "")
            return c if isinstance(c, str) else json.dumps(c)
    return ""


def _count_tokens(text: str) -> int:
    return len(text.split())


def _stable_u64(*parts: object) -> int:
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big")


@dataclass
class RequestRecord:
    """What the server saw for one request (times are ``time.monotonic()`` seconds)."""

    index: int
    method: str
    path: str
    arrival_s: float
    in_flight_at_arrival: int
    fault: str | None = None
    status: int | None = None  # None: no response was sent (hang, drop, client gone)
    latency_s: float = 0.0
    finished_s: float | None = None
    client_disconnected: bool = False
    authorized: bool = True
    body: dict[str, Any] | None = None


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _HTTPConnection(asyncio.Protocol):
    """One client connection: parses HTTP/1.1 requests and serves them one at a time."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[_Request | None] = collections.deque()
        self.wakeup: asyncio.Event | None = None
        self.closed: asyncio.Future | None = None
        self.task: asyncio.Task | None = None

    # --- protocol callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self.transport = transport  # type: ignore[assignment]
        self.wakeup = asyncio.Event()
        self.closed = loop.create_future()
        self.server._connections.add(self)
        with self.server._lock:
            self.server._connections_opened += 1
        self.task = loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            req = self._parse_one()
            if req is None:
                break
            self.queue.append(req)
            self.wakeup.set()

    def eof_received(self) -> bool:
        self._mark_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed()
        self.server._connections.discard(self)

    def _mark_closed(self) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)
        if self.wakeup is not None:
            self.wakeup.set()

    # --- parsing ------------------------------------------------------------------------------
    def _parse_one(self) -> _Request | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEADER_BYTES:
                self._fail(431)
            return None
        head = bytes(self.buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._fail(400)
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._fail(501)
            return None
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            self._fail(400)
            return None
        if length > _MAX_BODY_BYTES:
            self._fail(413)
            return None
        if len(self.buf) < end + 4 + length:
            return None
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        conn = headers.get("connection", "").lower()
        keep_alive = conn != "close" if version.strip().upper() == "HTTP/1.1" else conn == "keep-alive"
        return _Request(method.upper(), target.split("?", 1)[0], headers, body, keep_alive)

    def _fail(self, status: int) -> None:
        self.buf.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_response_bytes(status, {"error": {"message": _STATUS_TEXT.get(status, "")}}, False))
            self.transport.close()

    # --- serving ------------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while True:
                while not self.queue:
                    if self.closed.done():
                        return
                    self.wakeup.clear()
                    await self.wakeup.wait()
                req = self.queue.popleft()
                keep = await self.server._handle(self, req)
                if not keep:
                    if not self.transport.is_closing():
                        self.transport.close()
                    return
        except asyncio.CancelledError:
            pass

    async def sleep_or_disconnect(self, seconds: float) -> bool:
        """Sleep ``seconds``; return True early if the client went away meanwhile.

        One timer and one callback per request (``wait_for(shield(...))`` costs two extra
        futures and a task wake-up, which shows at a thousand requests per second).
        """
        if seconds <= 0 or self.closed.done():
            return self.closed.done()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter, False)

        def on_close(_f: asyncio.Future) -> None:
            _resolve(waiter, True)

        self.closed.add_done_callback(on_close)
        try:
            return await waiter
        finally:
            timer.cancel()
            self.closed.remove_done_callback(on_close)

    def send(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


def _resolve(fut: asyncio.Future, value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _response_bytes(status: int, payload: Any, keep_alive: bool, extra_headers: Mapping[str, str] = (),
                    raw: bytes | None = None, *, encoding: str | None = None) -> bytes:
    """One HTTP/1.1 response: the body with ``Content-Length``; ``encoding="gzip"`` compresses it first,
    ``encoding="chunked"`` sends it in 64 KiB chunks with no length up front."""
    body = raw if raw is not None else json.dumps(payload).encode()
    lines = [f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Unknown')}", "Content-Type: application/json"]
    if encoding == "gzip":
        body = gzip.compress(body, compresslevel=6, mtime=0)
        lines.append("Content-Encoding: gzip")
    if encoding == "chunked":
        lines.append("Transfer-Encoding: chunked")
        step = 64 * 1024
        body = b"".join(b"%x\r\n" % len(body[i:i + step]) + body[i:i + step] + b"\r\n"
                        for i in range(0, len(body), step)) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    lines += [f"{k}: {v}" for k, v in dict(extra_headers).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class FakeOpenAIServer:
    """An OpenAI-compatible chat server on 127.0.0.1 with scripted latency and faults.

    Args:
        reply: the reply text: ``None`` echoes the last user message; a string is returned
            as is; a ``callable(messages, body) -> str`` computes it.
        latency: seconds before answering; a number or ``callable(rng) -> seconds``
            (see :func:`constant`, :func:`uniform`, :func:`lognormal`). Each request draws
            from its own ``random.Random`` seeded by ``(seed, request index)``.
        faults: the faults drawn from when ``fault_rate > 0`` (names in :data:`FAULTS`).
        fault_rate: probability that a request gets a fault.
        fault_mode: ``"per_request"`` draws for every request (so a retry may succeed);
            ``"per_prompt"`` draws once per distinct chat (a hash of the messages), so every
            retry of that chat fails the same way: handy to make whole episodes fail.
        schedule: explicit faults by request index: a sequence (``schedule[i]`` for request
            ``i``, ``None`` or ``"ok"`` for a normal reply; past the end, ``fault_rate``
            applies) or a ``callable(index, body) -> fault | None``. Takes precedence.
        retry_after_s: the ``Retry-After`` header sent with a 429 (seconds; ``None`` omits it).
        hang_s: how long ``"hang"`` holds a request before closing without an answer.
        api_key: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
        model: the id listed by ``GET /v1/models``.
        seed: seeds latency and fault draws.
        record_bodies: keep each request's JSON body in :attr:`records`.
        oversize_bytes: the body size of the ``"oversized*"`` faults (before gzip), default 9 MiB
            (just over the backend's default cap of 8 MiB).
        rewrite: ``callable(payload, request_body) -> payload or bytes``, applied to every normal reply before
            it is sent: a server that gets ``usage`` wrong, or a body that is not what it should be (bytes are
            sent as they are).

    Use as a context manager (``with FakeOpenAIServer() as srv: srv.base_url``) or call
    :meth:`start` / :meth:`stop`. :meth:`stats` and :attr:`records` hold what the server
    measured, including the number of requests in flight.
    """

    def __init__(
        self,
        *,
        reply: str | ReplyFn | None = None,
        latency: float | LatencyFn | None = None,
        faults: Sequence[str] = ("429", "500", "503", "drop", "empty", "badjson"),
        fault_rate: float = 0.0,
        fault_mode: str = "per_request",
        schedule: Sequence[str | None] | FaultFn | None = None,
        retry_after_s: float | None = 1.0,
        hang_s: float = 3600.0,
        api_key: str | None = None,
        model: str = "fake-model",
        seed: int = 0,
        record_bodies: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        oversize_bytes: int = 9 * 1024 * 1024,
        rewrite: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None,
    ) -> None:
        bad = [f for f in faults if f not in FAULTS]
        if bad:
            raise ValueError(f"unknown fault(s) {bad}; expected names from {FAULTS}.")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate!r}.")
        if fault_rate > 0 and not faults:
            raise ValueError("fault_rate > 0 needs at least one fault name in faults=(...).")
        if fault_mode not in ("per_request", "per_prompt"):
            raise ValueError(f"fault_mode must be 'per_request' or 'per_prompt', got {fault_mode!r}.")
        if schedule is not None and not callable(schedule):
            bad = [f for f in schedule if f not in (None, "ok") and f not in FAULTS]
            if bad:
                raise ValueError(f"unknown fault(s) {bad} in schedule; expected None, 'ok' or names from {FAULTS}.")
        self.reply = reply
        self.latency = _as_latency(latency)
        self.faults = tuple(faults)
        self.fault_rate = float(fault_rate)
        self.fault_mode = fault_mode
        self.schedule = schedule
        self.retry_after_s = retry_after_s
        self.hang_s = float(hang_s)
        self.api_key = api_key
        self.model = model
        self.seed = int(seed)
        self.record_bodies = record_bodies
        self.oversize_bytes = int(oversize_bytes)
        self.rewrite = rewrite
        self.host = host
        self._port = port
        self.records: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self._max_in_flight = 0
        self._next_index = 0
        self._connections: set[_HTTPConnection] = set()
        self._connections_opened = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, ready for ``OpenAI(base_url=...)``."""
        if self.port is None:
            raise RuntimeError("the server is not running; use `with FakeOpenAIServer() as srv:` or call start().")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-openai-server", daemon=True)
        self._thread.start()

        async def _open():
            return await self._loop.create_server(
                lambda: _HTTPConnection(self), self.host, self._port, backlog=2048, reuse_address=True
            )

        self._server = asyncio.run_coroutine_threadsafe(_open(), self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        loop = self._loop

        async def _close():
            self._server.close()
            for c in list(self._connections):
                if c.transport is not None:
                    c.transport.abort()
                if c.task is not None:
                    c.task.cancel()
            await asyncio.sleep(0)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(_close(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
            loop.close()
            self._thread = None
            self._loop = None
            self.port = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self.port is not None else "stopped"
        return f"FakeOpenAIServer({where}, fault_rate={self.fault_rate}, requests={len(self.records)})"

    # --- measurements -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``requests``, ``in_flight``, ``max_in_flight``, ``faults`` and ``statuses`` (counters), and
        ``connections_opened`` (TCP connections accepted since start) / ``connections_open`` (now)."""
        with self._lock:
            recs = list(self.records)
            return {
                "requests": len(recs),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "faults": dict(collections.Counter(r.fault for r in recs if r.fault)),
                "statuses": dict(collections.Counter(r.status for r in recs)),
                "connections_opened": self._connections_opened,
                "connections_open": len(self._connections),
            }

    def reset_stats(self) -> None:
        """Forget the records and the max-in-flight mark (the request index keeps counting)."""
        with self._lock:
            self.records = []
            self._max_in_flight = self._in_flight

    def chat_records(self) -> list[RequestRecord]:
        """Records of ``POST /v1/chat/completions`` requests only."""
        with self._lock:
            return [r for r in self.records if r.path.endswith("/chat/completions")]

    # --- request handling ---------------------------------------------------------------------
    def _choose_fault(self, index: int, body: dict[str, Any]) -> str | None:
        sched = self.schedule
        if callable(sched):
            f = sched(index, body)
            return None if f in (None, "ok") else f
        if sched is not None and index < len(sched):
            f = sched[index]
            return None if f in (None, "ok") else f
        if self.fault_rate <= 0:
            return None
        if self.fault_mode == "per_prompt":
            rng = random.Random(_stable_u64("fault", self.seed, json.dumps(body.get("messages"), sort_keys=True)))
        else:
            rng = random.Random(_stable_u64("fault", self.seed, index))
        if rng.random() < self.fault_rate:
            return rng.choice(self.faults)
        return None

    def _reply_text(self, messages: list[dict[str, Any]], body: dict[str, Any]) -> str:
        if self.reply is None:
            return echo_reply(messages, body)
        if callable(self.reply):
            return str(self.reply(messages, body))
        return str(self.reply)

    async def _handle(self, conn: _HTTPConnection, req: _Request) -> bool:
        """Serve one request; return whether the connection stays open."""
        with self._lock:
            index = self._next_index
            self._next_index += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            rec = RequestRecord(index, req.method, req.path, time.monotonic(), self._in_flight)
            self.records.append(rec)
        try:
            return await self._dispatch(conn, req, rec)
        finally:
            self._finish(rec)

    def _finish(self, rec: RequestRecord) -> None:
        """Stop counting ``rec`` as in flight (once), before its response leaves."""
        with self._lock:
            if rec.finished_s is None:
                rec.finished_s = time.monotonic()
                self._in_flight -= 1

    def _send(self, conn: _HTTPConnection, rec: RequestRecord, status: int, payload: Any, keep: bool,
              headers: Mapping[str, str] = (), raw: bytes | None = None, encoding: str | None = None) -> bool:
        rec.status = status
        self._finish(rec)
        conn.send(_response_bytes(status, payload, keep, headers, raw, encoding=encoding))
        return keep

    async def _dispatch(self, conn: _HTTPConnection, req: _Request, rec: RequestRecord) -> bool:
        keep = req.keep_alive
        if self.api_key is not None:
            rec.authorized = req.headers.get("authorization", "") == f"Bearer {self.api_key}"
            if not rec.authorized:
                err = {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                 "code": "invalid_api_key"}}
                return self._send(conn, rec, 401, err, keep)
        if req.path in ("/health", "/v1/health") and req.method == "GET":
            return self._send(conn, rec, 200, {"status": "ok"}, keep)
        if req.path == "/v1/models" and req.method == "GET":
            data = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
            return self._send(conn, rec, 200, data, keep)
        if req.path != "/v1/chat/completions":
            return self._send(conn, rec, 404, {"error": {"message": f"no route {req.path}"}}, keep)
        if req.method != "POST":
            return self._send(conn, rec, 405, {"error": {"message": "use POST"}}, keep)
        try:
            body = json.loads(req.body or b"null")
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ValueError("body must be a JSON object with a 'messages' list")
        except ValueError as e:
            return self._send(conn, rec, 400, {"error": {"message": f"invalid request: {e}"}}, keep)
        if self.record_bodies:
            rec.body = body
        if body.get("stream"):
            return self._send(conn, rec, 400, {"error": {"message": "the fake server does not stream"}}, keep)

        fault = self._choose_fault(rec.index, body)
        rec.fault = fault
        rng = random.Random(_stable_u64("latency", self.seed, rec.index))
        delay = max(0.0, float(self.latency(rng))) if self.latency is not None else 0.0
        rec.latency_s = delay
        if fault == "hang":
            rec.client_disconnected = await conn.sleep_or_disconnect(self.hang_s)
            return False
        if await conn.sleep_or_disconnect(delay):
            rec.client_disconnected = True
            return False
        if fault == "drop":
            self._finish(rec)
            conn.transport.abort()
            return False
        if fault is not None and fault.isdigit():
            status = int(fault)
            headers = {}
            if status == 429 and self.retry_after_s is not None:
                headers["Retry-After"] = f"{self.retry_after_s:g}"
            err = {"error": {"message": f"injected fault {status}", "type": "fake_fault", "code": fault}}
            return self._send(conn, rec, status, err, keep, headers)
        if fault == "badjson":
            return self._send(conn, rec, 200, None, keep, raw=b'{"id": "chatcmpl-broken", "choices": [{"mess')

        messages = body["messages"]
        text = self._reply_text(messages, body)
        finish = "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0 and _count_tokens(text) > max_tokens:
            text = " ".join(text.split()[:max_tokens])
            finish = "length"
        if fault in ("emptytext", "lengthcut"):
            text = ""
        prompt_tokens = sum(_count_tokens(m.get("content", "")) for m in messages
                            if isinstance(m, Mapping) and isinstance(m.get("content", ""), str))
        completion_tokens = _count_tokens(text)
        if fault == "lengthcut":
            finish = "length"
            completion_tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else LENGTHCUT_DEFAULT_TOKENS
        choices = [] if fault == "empty" else [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ]
        payload = {
            "id": f"chatcmpl-fake-{rec.index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if fault is not None and fault.startswith("oversized"):
            # a valid reply whose text pads the body to oversize_bytes
            base = len(json.dumps(payload).encode())
            choices[0]["message"]["content"] = text + " " + "x" * max(0, self.oversize_bytes - base - 1)
            encoding = {"oversized_chunked": "chunked", "oversized_gzip": "gzip"}.get(fault)
            return self._send(conn, rec, 200, payload, keep, encoding=encoding)
        if self.rewrite is not None:
            payload = self.rewrite(payload, body)
            if isinstance(payload, (bytes, bytearray)):
                return self._send(conn, rec, 200, None, keep, raw=bytes(payload))
        return self._send(conn, rec, 200, payload, keep)
