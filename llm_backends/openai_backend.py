"""``openai:MODEL``: any OpenAI-compatible chat server (OpenAI, vLLM, llama.cpp's server, Ollama).

Built for failure (design.md section 6):

* every attempt has a timeout (``timeout_s``) and every call a total ``deadline_s``;
* 429, 408, 5xx, timeouts, dropped connections and empty or malformed replies are retried
  with exponential backoff and jitter, waiting at least as long as ``Retry-After`` says;
  any other 4xx fails at once;
* concurrency, requests per minute and tokens per minute are bounded by one
  :class:`~promptr1.llm_backends.limits.SharedLimiter` shared by every episode (and every
  backend given the same ``limiter=``);
* when it gives up it raises :class:`EnvLLMError` with ``kind`` and ``attempts``; the
  environment flags the episode and the text never reaches the agent;
* the API key never appears in an exception message, a log line or a ``repr``.

The retry loop runs on ``tenacity`` (with this module's policy for waits and stops; the first
attempt runs before tenacity is set up, since most calls need no retry). All requests run on one
event loop owned by the backend (a daemon thread): ``acomplete`` called from any other loop hands
its request over with ``asyncio.run_coroutine_threadsafe`` and awaits the result, because the
SDK's HTTP client is bound to the loop it first ran on; a driver of many calls (the vector env)
can run on that loop itself (:meth:`OpenAIBackend.io_loop_thread`) and skip the hand-over.

Cost per request (it decides throughput at hundreds of requests per second, see
``benchmarks/bench_vector_env.py``): the ``openai`` package is the client, called as
``client.post(path, body=..., cast_to=httpx.Response)``: the SDK builds the request, adds auth and
maps errors, but neither transforms the parameters nor builds a pydantic model; we parse the JSON
ourselves. Under it, :class:`_LeanTransport` (an httpx transport on asyncio protocols: one
keep-alive pool of ``max_concurrency`` connections, one socket write per request) replaces
httpx's default pool, whose per-request scan of every connection dominated the client's CPU.
``lean_http=False`` (and any proxy from the environment, or a user's ``http_client``) keeps
httpx's own transport.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import openai
from tenacity import AsyncRetrying, retry_if_exception

from .base import BaseBackend, Completion, EnvLLMError, LoopThread, Message, validate_messages
from .limits import SharedLimiter, estimate_tokens

__all__ = [
    "SAMPLING_KEYS",
    "OpenAIBackend",
    "backoff_delay",
    "cost_usd",
    "parse_chat_payload",
    "parse_retry_after",
    "scrub_secrets",
]

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
#: Sampling keywords forwarded to the server (others are ignored; use ``extra_body`` for server-specific ones).
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed", "stop")
#: Completion tokens assumed for the tokens-per-minute estimate when ``max_tokens`` is not given.
DEFAULT_COMPLETION_ESTIMATE = 256
#: An attempt needs at least this much time left before the deadline to be worth starting.
MIN_ATTEMPT_S = 0.05
#: In-flight requests per HTTP client before another client (connection pool) is added: httpx's
#: pool scans all its connections on every request, so many small pools beat one large one.
REQUESTS_PER_CLIENT = 16
MAX_CLIENTS = 16

PriceSpec = "tuple[float, float] | Mapping[str, tuple[float, float]] | None"


# ---------------------------------------------------------------------------------------------
# small pure helpers
# ---------------------------------------------------------------------------------------------
def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential with jitter.

    The ceiling doubles each attempt (``base_s * 2**(attempt-1)``, at most ``cap_s``); the
    delay is drawn uniformly from its upper half, so waits grow but concurrent clients spread out.

    >>> rng = random.Random(0)
    >>> [0.5 <= backoff_delay(1, 1.0, 30.0, rng) <= 1.0, 2.0 <= backoff_delay(3, 1.0, 30.0, rng) <= 4.0]
    [True, True]
    >>> 15.0 <= backoff_delay(20, 1.0, 30.0, rng) <= 30.0
    True
    """
    ceiling = min(cap_s, base_s * (2.0 ** min(attempt - 1, 60)))
    return ceiling / 2.0 + rng.uniform(0.0, ceiling / 2.0)


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be seconds or an HTTP date. Returns None when absent or unreadable.

    >>> parse_retry_after({"retry-after": "2"})
    2.0
    >>> parse_retry_after({"retry-after-ms": "250", "retry-after": "9"})
    0.25
    >>> parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0)
    10.0
    >>> parse_retry_after({"retry-after": "soon"}) is None
    True
    """
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms) / 1000.0
            if math.isfinite(v) and v >= 0:
                return v
        except ValueError:
            pass
    ra = lower.get("retry-after")
    if ra is None:
        return None
    try:
        v = float(ra)
        return v if math.isfinite(v) and v >= 0 else None
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(ra).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, price_per_1k: Any) -> float | None:
    """Dollars for one call from a price table (USD per 1,000 tokens, ``(input, output)``).

    ``price_per_1k`` is None (no cost), one ``(input, output)`` pair, or a mapping from model
    name to such a pair; a dated model name (``gpt-4o-mini-2024-07-18``) falls back to the
    longest key it starts with.

    >>> cost_usd("m", 1000, 500, (0.15, 0.6))
    0.45
    >>> cost_usd("gpt-4o-mini-2024-07-18", 2000, 0, {"gpt-4o": (5.0, 15.0), "gpt-4o-mini": (0.15, 0.6)})
    0.3
    >>> cost_usd("llama", 10, 10, {"gpt-4o": (5.0, 15.0)}) is None
    True
    """
    if price_per_1k is None:
        return None
    if isinstance(price_per_1k, Mapping):
        pair = price_per_1k.get(model)
        if pair is None:
            keys = sorted((k for k in price_per_1k if model.startswith(k)), key=len, reverse=True)
            pair = price_per_1k[keys[0]] if keys else None
        if pair is None:
            return None
    else:
        pair = price_per_1k
    p_in, p_out = pair
    return round(prompt_tokens / 1000.0 * float(p_in) + completion_tokens / 1000.0 * float(p_out), 12)


_SK_PATTERN = re.compile(r"\b(sk-|sk_)[A-Za-z0-9_\-*]{6,}")
_BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)\S+")


def scrub_secrets(text: str, secrets: Sequence[str] = (), *, limit: int = 500) -> str:
    """Remove secrets (and anything shaped like an API key) from ``text``; truncate to ``limit``.

    >>> scrub_secrets("Incorrect API key provided: sk-proj-abc123XYZ. Header Bearer abc", ["abc123XYZ"])
    'Incorrect API key provided: sk-***. Header Bearer ***'
    """
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    text = _SK_PATTERN.sub(r"\1***", text)
    text = _BEARER_PATTERN.sub(r"\1***", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_chat_payload(payload: Any) -> tuple[str, str | None, dict[str, int] | None, str | None]:
    """Pull ``(text, finish_reason, usage, model)`` out of a chat-completions JSON body.

    Raises ``ValueError`` (malformed) or ``LookupError`` (empty) when there is no reply text.

    >>> parse_chat_payload({"model": "m", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
    ...                     "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    ('hi', 'stop', {'prompt_tokens': 3, 'completion_tokens': 1}, 'm')
    >>> parse_chat_payload({"choices": []})
    Traceback (most recent call last):
    ...
    LookupError: the reply has no choices
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"the reply is JSON {type(payload).__name__}, expected an object")
    if "error" in payload and "choices" not in payload:
        raise ValueError(f"the reply is an error object: {str(payload.get('error'))[:200]}")
    choices = payload.get("choices")
    if not isinstance(choices, list):
        raise ValueError("the reply has no 'choices' list")
    if not choices:
        raise LookupError("the reply has no choices")
    first = choices[0]
    if not isinstance(first, Mapping) or not isinstance(first.get("message"), Mapping):
        raise ValueError("choices[0] has no 'message' object")
    content = first["message"].get("content")
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    if content is not None and not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, expected a string")
    if not content or not content.strip():
        raise LookupError("the reply text is empty")
    usage = payload.get("usage")
    usage_out = None
    if isinstance(usage, Mapping):
        try:
            usage_out = {
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or 0),
            }
        except (TypeError, ValueError):
            usage_out = None
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    finish = first.get("finish_reason") if isinstance(first.get("finish_reason"), str) else None
    return content, finish, usage_out, model


def _display_url(url: str) -> str:
    """The URL without credentials or query, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _is_openai_host(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host == "api.openai.com" or host.endswith(".openai.com")


def _sdk_httpx():
    """The httpx module the SDK is built on (``httpx2`` for openai 3, ``httpx`` before)."""
    for cls in openai.DefaultAsyncHttpxClient.__mro__:
        root = sys.modules.get(cls.__module__.split(".")[0])
        if root is not None and getattr(root, "AsyncClient", None) is cls:
            return root
    import httpx  # pragma: no cover - an SDK whose default client is not an httpx subclass

    return httpx  # pragma: no cover


_httpx = _sdk_httpx()
_asyncio_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+


def _httpx_limits(max_connections: int, keepalive: int):
    """An httpx ``Limits`` for the SDK's own connection pool, or None."""
    try:
        return _httpx.Limits(max_connections=max_connections, max_keepalive_connections=keepalive)
    except Exception:  # pragma: no cover - unexpected httpx API
        return None


# ---------------------------------------------------------------------------------------------
# a lean HTTP/1.1 transport for the SDK's httpx client
# ---------------------------------------------------------------------------------------------
#: Idle keep-alive connections older than this are closed rather than reused (as httpx does), so
#: a request does not race a server that drops idle connections.
KEEPALIVE_EXPIRY_S = 5.0
_MAX_HEAD_BYTES = 64 * 1024


class _BodyStream(_httpx.AsyncByteStream):
    """A response body already read off the socket, handed to httpx (which decodes gzip etc.)."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self):
        yield self._body

    async def aclose(self) -> None:
        pass


class _ProtocolError(Exception):
    pass


class _H11Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, the response parsed as it arrives.

    Framing follows RFC 9112 section 6: no body for HEAD, 1xx, 204 and 304; ``chunked``; else
    ``Content-Length``; else the body runs to the end of the connection (which is then not reused).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._waiter: asyncio.Future | None = None
        self._head_req = False
        self._got_bytes = False
        self._last_data = 0.0
        self._reset_response()

    def _reset_response(self) -> None:
        self._status: int | None = None
        self._reason = b""
        self._version = b"HTTP/1.1"
        self._headers: list[tuple[bytes, bytes]] = []
        self._mode = ""  # "length", "chunked", "close"
        self._need = 0
        self._chunks: list[bytes] = []
        self._keep = True

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes while idle: the connection is out of step; drop it
            self.close()
            return
        self._got_bytes = True
        self._last_data = self.loop.time()
        self._buf += data
        try:
            self._parse()
        except (_ProtocolError, ValueError, IndexError) as e:
            self._fail(_httpx.RemoteProtocolError(f"malformed HTTP response: {e}"))
            self.close()

    def eof_received(self) -> bool:
        if self._waiter is not None and self._status is not None and self._mode == "close":
            self._finish(bytes(self._buf))
            self._buf.clear()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._status is not None and self._mode == "close":
                self._finish(bytes(self._buf))
            else:
                what = "before the response was complete" if self._got_bytes else "without sending a response"
                self._fail(_httpx.RemoteProtocolError(f"server disconnected {what}"))

    # --- requests ---------------------------------------------------------------------------
    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def start(self, data: bytes, head_request: bool) -> asyncio.Future:
        self._reset_response()
        self._buf.clear()
        self._head_req = head_request
        self._got_bytes = False
        self._last_data = self.loop.time()
        self._waiter = fut = self.loop.create_future()
        self.transport.write(data)
        return fut

    @property
    def keep_alive(self) -> bool:
        return self._keep and not self.closed

    def _fail(self, exc: BaseException) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_exception(exc)

    def _finish(self, body: bytes) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result((self._status, self._reason, self._version, self._headers, body))

    # --- parsing ----------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        while self._status is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD_BYTES:
                    raise _ProtocolError("response head too large")
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise _ProtocolError(f"bad status line {lines[0][:80]!r}")
            status = int(parts[1])
            if 100 <= status < 200:  # informational (100 Continue, 103 Early Hints): skip it
                continue
            headers = []
            length = None
            chunked = False
            conn = b""
            for line in lines[1:]:
                k, sep, v = line.partition(b":")
                if not sep:
                    raise _ProtocolError(f"bad header line {line[:80]!r}")
                k, v = k.strip(), v.strip()
                headers.append((k, v))
                lk = k.lower()
                if lk == b"content-length":
                    length = int(v)
                    if length < 0:
                        raise _ProtocolError("negative Content-Length")
                elif lk == b"transfer-encoding":
                    chunked = v.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                elif lk == b"connection":
                    conn = v.lower()
            self._status, self._version, self._headers = status, parts[0], headers
            self._reason = parts[2] if len(parts) > 2 else b""
            if parts[0] == b"HTTP/1.0":
                self._keep = b"keep-alive" in conn
            else:
                self._keep = b"close" not in conn
            if self._head_req or status in (204, 304):
                self._mode, self._need = "length", 0
            elif chunked:
                self._mode, self._need = "chunked", -1
            elif length is not None:
                self._mode, self._need = "length", length
            else:
                self._mode, self._keep = "close", False
        if self._mode == "length":
            if len(buf) >= self._need:
                body = bytes(buf[: self._need])
                del buf[: self._need]
                if buf:  # more than one response's worth of bytes: do not reuse
                    self._keep = False
                self._finish(body)
        elif self._mode == "chunked":
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            if self._need == -1:  # expecting a chunk-size line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD_BYTES:
                        raise _ProtocolError("chunk size line too long")
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                del buf[: end + 2]
                self._need = size if size > 0 else -2
            elif self._need == -2:  # after the last chunk: trailers up to an empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    if buf:
                        self._keep = False
                    self._finish(b"".join(self._chunks))
                    return
            else:
                if len(buf) < self._need + 2:
                    return
                self._chunks.append(bytes(buf[: self._need]))
                del buf[: self._need + 2]
                self._need = -1


class _LeanTransport(_httpx.AsyncBaseTransport):
    """A minimal HTTP/1.1 keep-alive transport for the SDK's httpx client, built on asyncio.

    The SDK stays the client (URLs, headers, auth, error mapping); only the bytes on the wire go
    through here. Compared with httpx's default pool it does one socket write per request
    (head and body together), keeps idle connections in a LIFO stack (no scan of the whole pool
    per request: closed connections are dropped when asyncio reports them closed) and reads
    the response in a protocol callback instead of a chain of stream wrappers. At a few
    hundred requests per second that is most of the client's CPU.

    Plain HTTP and HTTPS (the ``ssl_context`` httpx would use); no proxies, no HTTP/2 (the
    backend uses httpx's own transport when a proxy is configured). Errors are httpx's
    (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``), so the SDK
    maps them as usual. As with httpx, a connection the server drops is not retried here (the
    request may have reached it): the backend's retry policy decides, and counts the attempt. A
    connection the server closed while idle is never reused: asyncio reports the close at once.
    """

    def __init__(self, max_keepalive: int = 64, keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S) -> None:
        self.max_keepalive = max(1, int(max_keepalive))
        self.keepalive_expiry_s = float(keepalive_expiry_s)
        self._idle: dict[tuple[str, str, int], list[_H11Connection]] = {}
        self._ssl = None
        self._closed = False
        self.opened = 0  # connections opened (for tests and stats)
        self.active = 0  # requests in flight

    def _ssl_context(self):
        if self._ssl is None:
            self._ssl = _httpx.create_ssl_context()
        return self._ssl

    async def _connect(self, key, timeout: float | None) -> _H11Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        ssl_ctx = self._ssl_context() if scheme == "https" else None
        coro = loop.create_connection(lambda: _H11Connection(loop), host, port, ssl=ssl_ctx,
                                      server_hostname=host if ssl_ctx is not None else None)
        try:
            if timeout is None:
                _, conn = await coro
            else:
                _, conn = await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise _httpx.ConnectTimeout(f"no connection within {timeout} s") from None
        except OSError as e:  # refused, unreachable, TLS failure (ssl.SSLError is an OSError)
            raise _httpx.ConnectError(f"{type(e).__name__}: {e}") from None
        self.opened += 1
        return conn

    def _checkout(self, key) -> _H11Connection | None:
        stack = self._idle.get(key)
        if not stack:
            return None
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            if conn.closed or now - conn.idle_since > self.keepalive_expiry_s:
                conn.close()
                continue
            return conn
        return None

    def _checkin(self, key, conn: _H11Connection) -> None:
        if self._closed or not conn.keep_alive:
            conn.close()
            return
        stack = self._idle.setdefault(key, [])
        if len(stack) >= self.max_keepalive:
            stale = stack.pop(0)  # the longest idle goes
            stale.close()
        conn.idle_since = time.monotonic()
        stack.append(conn)

    @staticmethod
    def _encode(request, body: bytes) -> bytes:
        raw = request.headers.raw
        chunked = False
        for k, v in raw:
            if k.lower() == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        head = b"".join([request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n",
                         *(k + b": " + v + b"\r\n" for k, v in raw), b"\r\n"])
        if chunked:  # httpx set this for a streamed body; we read it whole: one chunk and the end
            return head + (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        return head + body

    async def handle_async_request(self, request):
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise _httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        key = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        body = await request.aread()
        data = self._encode(request, body)
        head_request = request.method == "HEAD"
        self.active += 1
        try:
            conn = self._checkout(key) or await self._connect(key, timeouts.get("connect"))
            try:
                status, reason, version, headers, content = await self._exchange(conn, data, head_request,
                                                                                 read_timeout)
            except BaseException:  # dropped, timed out, cancelled: the connection is done for
                conn.abort()
                raise
            self._checkin(key, conn)
            return _httpx.Response(status, headers=headers, stream=_BodyStream(content),
                                   extensions={"http_version": version, "reason_phrase": reason})
        finally:
            self.active -= 1

    @staticmethod
    async def _exchange(conn: _H11Connection, data: bytes, head_request: bool, read_timeout: float | None):
        fut = conn.start(data, head_request)
        if read_timeout is None:
            return await fut
        loop = conn.loop

        # the read timeout is for silence, not for the whole response: re-arm while bytes arrive
        def check() -> None:
            if fut.done():
                return
            left = conn._last_data + read_timeout - loop.time()
            if left > 0:
                handles[0] = loop.call_later(left, check)
            else:
                fut.set_exception(_httpx.ReadTimeout(f"no data for {read_timeout} s"))

        handles = [loop.call_later(read_timeout, check)]
        try:
            return await fut
        finally:
            handles[0].cancel()

    async def aclose(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()


def _env_proxy_applies(url: str) -> bool:
    """Whether a proxy from the environment (``HTTPS_PROXY`` ...) would apply to ``url`` for httpx."""
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies)


def _shutdown_loop_thread(lt: LoopThread) -> None:
    """Stop a backend's loop thread and release its executor threads (best effort, idempotent)."""
    loop = lt.loop
    if loop.is_closed():
        return
    lt.stop()
    thread = getattr(lt, "_thread", None)
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=2)
    if not loop.is_running():
        coro = loop.shutdown_default_executor()
        try:
            loop.run_until_complete(coro)
        except Exception as e:  # pragma: no cover - best effort (e.g. at interpreter exit)
            log.debug("could not shut down the backend loop's executor: %r", e)
            coro.close()
        loop.close()


class _AttemptError(Exception):
    """One failed attempt (internal; turned into :class:`EnvLLMError` when we give up)."""

    def __init__(self, kind: str, detail: str, *, retryable: bool, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, _AttemptError) and exc.retryable


# ---------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------
class OpenAIBackend(BaseBackend):
    """Chat completions from an OpenAI-compatible server, with retries, deadlines and limits.

    Args:
        model: the model name the server knows (``gpt-4o-mini``, a vLLM model id, ...).
        base_url: server root including ``/v1``; default ``$OPENAI_BASE_URL`` or OpenAI's.
        api_key: default ``$OPENAI_API_KEY``; local servers (any non-OpenAI URL) get the
            placeholder ``"EMPTY"`` when neither is set.
        timeout_s: limit for one attempt.
        deadline_s: limit for one call, all attempts and waits included (counted from the
            first attempt's start; queueing for the shared limiter before it does not count).
        max_retries: retries after the first attempt (so at most ``max_retries + 1`` attempts).
        backoff_base_s, backoff_max_s: see :func:`backoff_delay`; ``Retry-After`` wins when longer.
        max_concurrency, rpm, tpm: limits for a new :class:`SharedLimiter`; ignored when
            ``limiter`` is given (share one limiter between backends that share a quota).
        price_per_1k: USD per 1,000 tokens: ``(input, output)`` or ``{model: (input, output)}``.
        default_sampling: sampling keywords applied to every call (a call's own keywords win).
        extra_body: extra JSON fields for every request (e.g. vLLM's ``top_k``).
        seed: seeds the backoff jitter.
        lean_http: send requests through the lean HTTP/1.1 transport (one keep-alive pool sized
            for the concurrency; much less CPU per request than httpx's default pool). False, a
            proxy from the environment (``HTTPS_PROXY`` ...) or an ``http_client=`` keeps httpx's.
        **client_kwargs: passed to ``openai.AsyncOpenAI`` (``organization``, ``default_headers``,
            ``http_client``, ...). The SDK's own retries are always off.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        deadline_s: float = 180.0,
        max_retries: int = 6,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_concurrency: int = 32,
        rpm: float | None = None,
        tpm: float | None = None,
        price_per_1k: Any = None,
        default_sampling: Mapping[str, Any] | None = None,
        limiter: SharedLimiter | None = None,
        extra_body: Mapping[str, Any] | None = None,
        seed: int | None = None,
        lean_http: bool = True,
        **client_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model, str) or not model.strip():
            raise ValueError("OpenAIBackend needs a model name, e.g. OpenAIBackend('gpt-4o-mini') or 'openai:gpt-4o-mini'.")
        for k, v in (("timeout_s", timeout_s), ("deadline_s", deadline_s)):
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"{k} must be a positive number of seconds, got {v!r}.")
        if int(max_retries) < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}.")
        if not backoff_base_s >= 0 or not backoff_max_s >= 0:
            raise ValueError("backoff_base_s and backoff_max_s must be >= 0.")
        for k in ("max_retries", "timeout", "api_key", "base_url"):
            if k in client_kwargs:
                raise TypeError(
                    f"{k!r} is not a client keyword here: use OpenAIBackend(timeout_s=..., max_retries=..., "
                    "api_key=..., base_url=...)."
                )
        self.model = model.strip()
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if _is_openai_host(self.base_url):
                raise ValueError(
                    f"OpenAIBackend({self.model!r}) talks to {_display_url(self.base_url)} but no API key was "
                    "given: set the OPENAI_API_KEY environment variable or pass api_key=..., or point "
                    "base_url / OPENAI_BASE_URL at a local server (vLLM, llama.cpp, Ollama)."
                )
            key = "EMPTY"
        self._api_key = key
        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.limiter = limiter if limiter is not None else SharedLimiter(max_concurrency, rpm, tpm)
        self.price_per_1k = price_per_1k
        self.default_sampling = dict(default_sampling or {})
        self.extra_body = dict(extra_body or {})
        self.seed = seed
        self.lean_http = bool(lean_http)
        self._client_kwargs = dict(client_kwargs)
        self._init_runtime()

    # --- runtime state (not pickled) ----------------------------------------------------------
    def _init_runtime(self) -> None:
        self._loop_thread = None
        self._loop_lock = threading.Lock()
        self._pid = os.getpid()
        self._clients: list = []
        self._client_load: list[int] = []
        self._transport: _LeanTransport | None = None
        self._rng = random.Random(self.seed)
        self._stats_lock = threading.Lock()
        self._stats: Counter = Counter()
        self._fail_kinds: Counter = Counter()
        self._error_kinds: Counter = Counter()
        self._warned_keys: set[str] = set()
        self._key_prefix = f"promptr1-{os.urandom(6).hex()}"
        self._key_counter = itertools.count(1)

    def __getstate__(self) -> dict[str, Any]:
        drop = {"_loop_thread", "_loop_lock", "_clients", "_client_load", "_transport", "_rng", "_stats_lock", "_stats", "_fail_kinds",
                "_error_kinds", "_warned_keys", "_pid", "_key_prefix", "_key_counter"}
        return {k: v for k, v in self.__dict__.items() if k not in drop}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self.model!r}, base_url={_display_url(self.base_url)!r}, "
            f"timeout_s={self.timeout_s}, deadline_s={self.deadline_s}, max_retries={self.max_retries}, "
            f"limiter={self.limiter!r})"
        )

    def _io_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop_thread is None or self._pid != os.getpid():  # first use, or we are a forked child
                self._loop_thread = LoopThread()
                self._pid = os.getpid()
                self._clients, self._client_load, self._transport = [], [], None
                self._key_prefix = f"promptr1-{os.urandom(6).hex()}"  # a forked child draws its own
                # a forgotten backend does not leave its loop thread running forever
                weakref.finalize(self, _shutdown_loop_thread, self._loop_thread)
            return self._loop_thread.loop

    def io_loop_thread(self) -> LoopThread:
        """The loop thread every request of this backend runs on (started on first use).

        A driver that runs many ``acomplete`` calls (the vector env) can run its own coroutines
        on this loop: each call then skips the hand-over to the backend's loop and back (two
        thread wake-ups). ``close()`` stops it.
        """
        self._io_loop()
        return self._loop_thread

    def _uses_lean_transport(self) -> bool:
        return self.lean_http and "http_client" not in self._client_kwargs and not _env_proxy_applies(self.base_url)

    def _new_client(self, n_clients: int):
        kwargs = dict(self._client_kwargs)
        if "http_client" not in kwargs:
            maxc = self.limiter.max_concurrency
            if self._uses_lean_transport():
                # one client, one pool with a keep-alive connection for every request in flight
                self._transport = _LeanTransport(max_keepalive=max(1, maxc))
                kwargs["http_client"] = openai.DefaultAsyncHttpxClient(transport=self._transport)
            else:
                limits = _httpx_limits(max(maxc, 10), max(8, 2 * math.ceil(maxc / n_clients)))
                if limits is not None:
                    kwargs["http_client"] = openai.DefaultAsyncHttpxClient(limits=limits)
        return openai.AsyncOpenAI(
            api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout_s, **kwargs
        )

    def _acquire_client(self) -> int:
        """Index of the least-loaded HTTP client (created on first use, on the backend's loop)."""
        clients = self._clients
        if not clients:
            if self._uses_lean_transport() or "http_client" in self._client_kwargs:
                n = 1  # the lean pool has no per-request scan; a user's client cannot be duplicated
            else:  # httpx's pool scans all its connections per request: several small pools beat one large
                n = min(MAX_CLIENTS, max(1, math.ceil(self.limiter.max_concurrency / REQUESTS_PER_CLIENT)))
            self._clients = clients = [self._new_client(n) for _ in range(n)]
            self._client_load = [0] * n
        if len(clients) == 1:
            i = 0
        else:
            i = min(range(len(clients)), key=self._client_load.__getitem__)
        self._client_load[i] += 1
        return i

    def close(self) -> None:
        """Close the HTTP clients and stop the backend's loop thread."""
        lt, clients = self._loop_thread, list(self._clients)
        if lt is not None and clients and self._pid == os.getpid() and not lt.loop.is_closed():
            async def _close_all():
                await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
            try:
                asyncio.run_coroutine_threadsafe(_close_all(), lt.loop).result(timeout=5)
            except Exception:  # pragma: no cover - closing is best effort
                pass
        self._clients, self._client_load, self._transport = [], [], None
        with self._loop_lock:
            if lt is not None and self._pid == os.getpid():
                _shutdown_loop_thread(lt)
            self._loop_thread = None

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public calls -------------------------------------------------------------------------
    def complete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        msgs = validate_messages(messages)
        loop = self._io_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("OpenAIBackend.complete() was called on the backend's own loop; await acomplete().")
        fut = asyncio.run_coroutine_threadsafe(self._call(msgs, sampling), loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    async def acomplete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        msgs = validate_messages(messages)
        loop = self._io_loop()
        if asyncio.get_running_loop() is loop:
            return await self._call(msgs, sampling)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._call(msgs, sampling), loop))

    def stats(self) -> dict[str, Any]:
        """Counters since creation: calls, ok, failures, attempts, retries, tokens, cost, error kinds."""
        with self._stats_lock:
            out: dict[str, Any] = {
                k: self._stats.get(k, 0)
                for k in ("calls", "ok", "failures", "attempts", "retries", "prompt_tokens", "completion_tokens")
            }
            out["cost_usd"] = round(self._stats.get("cost_usd_micros", 0) / 1e6, 6)
            out["latency_s_total"] = self._stats.get("latency_ms_total", 0) / 1000.0
            out["failure_kinds"] = dict(self._fail_kinds)
            out["attempt_error_kinds"] = dict(self._error_kinds)
        out["limiter"] = self.limiter.stats()
        return out

    # --- the call -----------------------------------------------------------------------------
    def _request_params(self, msgs: list[dict[str, str]], sampling: Mapping[str, Any]) -> dict[str, Any]:
        merged = {**self.default_sampling, **sampling}
        params: dict[str, Any] = {"model": self.model, "messages": msgs}
        for k, v in merged.items():
            if k in SAMPLING_KEYS:
                if v is not None:
                    params[k] = v
            elif k not in self._warned_keys:
                self._warned_keys.add(k)
                log.warning("OpenAIBackend ignores the sampling keyword %r (forwarded: %s; use extra_body=... "
                            "for server-specific fields).", k, ", ".join(SAMPLING_KEYS))
        if self.extra_body:
            params.update(self.extra_body)  # like the SDK's extra_body: merged into the JSON, wins on clashes
        return params

    async def _call(self, msgs: list[dict[str, str]], sampling: Mapping[str, Any]) -> Completion:
        t_enter = time.monotonic()
        params = self._request_params(msgs, sampling)
        est_tokens = sum(estimate_tokens(m["content"]) for m in msgs) + int(
            params.get("max_tokens") or DEFAULT_COMPLETION_ESTIMATE
        )
        # one idempotency key per call (all its attempts): the SDK would otherwise draw a uuid4 per request
        st: dict[str, Any] = {"deadline_at": None, "first_start": None, "errors": [], "stop": "", "attempts": 0,
                              "key": f"{self._key_prefix}-{next(self._key_counter)}"}

        failure: _AttemptError | None = None
        result = None
        try:  # the first attempt runs bare: most calls succeed, and tenacity costs ~40 us per call
            result = await self._attempt(params, est_tokens, st)
        except _AttemptError as e:
            failure = e
        if failure is not None and failure.retryable:
            first, failure = failure, None
            try:
                async for attempt in self._retrying(st):
                    with attempt:
                        if first is not None:  # replay attempt 1's failure: tenacity counts and waits as usual
                            e, first = first, None
                            raise e
                        result = await self._attempt(params, est_tokens, st)
            except _AttemptError as e:
                failure = e
        elapsed = time.monotonic() - t_enter
        n = st["attempts"]
        if failure is not None:  # raised outside the except block: no chained SDK exception (it holds headers)
            raise self._give_up(failure, st, n, elapsed)
        text, finish, usage, server_model, req_latency = result
        if usage is None:
            p_tok, c_tok, estimated = sum(estimate_tokens(m["content"]) for m in msgs), estimate_tokens(text), True
        else:
            p_tok, c_tok, estimated = usage["prompt_tokens"], usage["completion_tokens"], False
        cost = cost_usd(self.model, p_tok, c_tok, self.price_per_1k)
        if cost is None and server_model and server_model != self.model:
            cost = cost_usd(server_model, p_tok, c_tok, self.price_per_1k)
        errors = st["errors"]
        with self._stats_lock:
            stats = self._stats
            stats["calls"] += 1
            stats["ok"] += 1
            stats["attempts"] += n
            stats["retries"] += n - 1
            stats["prompt_tokens"] += p_tok
            stats["completion_tokens"] += c_tok
            stats["latency_ms_total"] += int(elapsed * 1000)
            if cost:
                stats["cost_usd_micros"] += int(round(cost * 1e6))
            if errors:
                self._error_kinds.update(errors)
        return Completion(
            text=text,
            latency_s=elapsed,
            prompt_tokens=p_tok,
            completion_tokens=c_tok,
            cost_usd=cost,
            attempts=n,
            model=server_model or self.model,
            extra={
                "retries": n - 1,
                "errors": list(errors),
                "queue_s": (st["first_start"] or t_enter) - t_enter,
                "request_latency_s": req_latency,
                "finish_reason": finish,
                "usage_estimated": estimated,
            },
        )

    def _retrying(self, st: dict[str, Any]) -> AsyncRetrying:
        """The retry policy for one call (``st`` holds its deadline and why it stopped)."""

        def wait(rs) -> float:
            exc = rs.outcome.exception()
            w = backoff_delay(rs.attempt_number, self.backoff_base_s, self.backoff_max_s, self._rng)
            ra = getattr(exc, "retry_after", None)
            return max(w, ra) if ra is not None else w

        def stop(rs) -> bool:
            if rs.attempt_number >= self.max_retries + 1:
                st["stop"] = "attempts"
                return True
            if st["deadline_at"] is not None and time.monotonic() + rs.upcoming_sleep + MIN_ATTEMPT_S >= st["deadline_at"]:
                st["stop"] = "deadline"
                return True
            return False

        def before_sleep(rs) -> None:
            exc = rs.outcome.exception()
            log.debug("openai %s: attempt %d failed (%s); retrying in %.2f s", self.model, rs.attempt_number,
                      getattr(exc, "kind", "error"), rs.upcoming_sleep)

        return AsyncRetrying(
            retry=retry_if_exception(_is_retryable), wait=wait, stop=stop, before_sleep=before_sleep,
            sleep=asyncio.sleep, reraise=True,
        )

    def _give_up(self, failure: _AttemptError, st: Mapping[str, Any], n: int, elapsed: float) -> EnvLLMError:
        kind = failure.kind
        stop_reason = "deadline" if kind == "deadline" else st["stop"]
        if stop_reason == "deadline":
            kind = "deadline"
        why = {
            "attempts": f"after {n} attempt(s) (max_retries={self.max_retries})",
            "deadline": f"within the deadline of {self.deadline_s:g} s ({n} attempt(s))",
        }.get(stop_reason, f"after {n} attempt(s), not retryable")
        msg = scrub_secrets(
            f"openai:{self.model} at {_display_url(self.base_url)} failed {why} in {elapsed:.2f} s; "
            f"last error {failure.kind}: {failure.detail}",
            [self._api_key],
        )
        with self._stats_lock:
            self._stats.update(calls=1, failures=1, attempts=n, retries=max(0, n - 1),
                               latency_ms_total=int(elapsed * 1000))
            self._fail_kinds[kind] += 1
            self._error_kinds.update(st["errors"])
        log.info("%s", msg)
        err = EnvLLMError(msg, kind=kind, attempts=n, retryable=failure.retryable)
        err.errors = list(st["errors"])  # kinds of every failed attempt
        err.status = failure.status
        return err

    async def _attempt(self, params: dict[str, Any], est_tokens: int, st: dict[str, Any]):
        """One HTTP request: returns ``(text, finish, usage, model, seconds)`` or raises ``_AttemptError``."""
        try:
            return await self._attempt_inner(params, est_tokens, st)
        except _AttemptError as e:
            st["errors"].append(e.kind)
            raise

    async def _attempt_inner(self, params: dict[str, Any], est_tokens: int, st: dict[str, Any]):
        async with self.limiter.slot(tokens=est_tokens) as slot:
            now = time.monotonic()
            if st["deadline_at"] is None:
                st["first_start"] = now
                st["deadline_at"] = now + self.deadline_s
            remaining = st["deadline_at"] - now
            if remaining < MIN_ATTEMPT_S:
                raise _AttemptError("deadline", "no time left for another attempt", retryable=False)
            st["attempts"] += 1
            per_try = min(self.timeout_s, remaining)
            cut = remaining < self.timeout_s
            timeout_kind = "deadline" if cut else "timeout"
            ci = self._acquire_client()
            client = self._clients[ci]
            t0 = time.monotonic()
            try:
                request = client.post("/chat/completions", body=params, cast_to=_httpx.Response,
                                      options={"timeout": per_try, "idempotency_key": st["key"]})
                if _asyncio_timeout is not None:  # a guard behind the SDK's own timeout; no extra task
                    async with _asyncio_timeout(per_try + 0.05):
                        raw = await request
                else:  # pragma: no cover - Python 3.10
                    raw = await asyncio.wait_for(request, timeout=per_try + 0.05)
                body = raw.content
            except (asyncio.TimeoutError, openai.APITimeoutError):
                raise _AttemptError(timeout_kind, f"no reply within {per_try:.2f} s", retryable=not cut) from None
            except openai.APIStatusError as e:
                status = int(getattr(e, "status_code", 0) or 0)
                detail = f"HTTP {status}: {scrub_secrets(str(getattr(e, 'message', e)), [self._api_key], limit=300)}"
                if status == 429:
                    ra = parse_retry_after(dict(e.response.headers)) if e.response is not None else None
                    raise _AttemptError("rate_limit", detail, retryable=True, retry_after=ra, status=status) from None
                if status == 408:
                    raise _AttemptError("timeout", detail, retryable=True, status=status) from None
                if status >= 500:
                    ra = parse_retry_after(dict(e.response.headers)) if e.response is not None else None
                    raise _AttemptError("server_error", detail, retryable=True, retry_after=ra, status=status) from None
                hint = " (check OPENAI_API_KEY / api_key)" if status in (401, 403) else ""
                raise _AttemptError("bad_request", detail + hint, retryable=False, status=status) from None
            except openai.APIConnectionError as e:
                raise _AttemptError("connection", type(e).__name__ + ": connection failed or dropped",
                                    retryable=True) from None
            except (openai.OpenAIError, OSError, ValueError, RuntimeError) as e:  # anything else the stack throws
                raise _AttemptError("error", f"{type(e).__name__}: {scrub_secrets(str(e), [self._api_key], limit=300)}",
                                    retryable=False) from None
            finally:
                if self._clients and client is self._clients[ci]:
                    self._client_load[ci] -= 1
            seconds = time.monotonic() - t0
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise _AttemptError("malformed_reply", f"the reply is not valid JSON ({len(body)} bytes)",
                                    retryable=True) from None
            try:
                text, finish, usage, model = parse_chat_payload(payload)
            except LookupError as e:
                raise _AttemptError("empty_reply", str(e), retryable=True) from None
            except ValueError as e:
                raise _AttemptError("malformed_reply", scrub_secrets(str(e), [self._api_key], limit=300),
                                    retryable=True) from None
            if usage is not None:
                slot.report_tokens(usage["prompt_tokens"] + usage["completion_tokens"])
            return text, finish, usage, model, seconds
