"""``openai:MODEL``: any OpenAI-compatible chat server (OpenAI, vLLM, llama.cpp's server, Ollama).

Built for failure (docs/architecture.md, environment errors):

* every attempt has a timeout (``timeout_s``) and every call a total ``deadline_s``;
* 429, 408, 5xx, timeouts, dropped connections and empty or malformed replies are retried
  with exponential backoff and jitter, waiting at least as long as ``Retry-After`` says;
  any other 4xx fails at once;
* concurrency, requests per minute and tokens per minute are bounded by one
  :class:`~promptr1.llm_backends.limits.SharedLimiter` shared by every episode (and every
  backend given the same ``limiter=``);
* an empty reply cut by the token limit (``finish_reason: "length"``) fails at once with
  ``kind="max_tokens"`` (it would fail the same way again), and a reply body over
  ``max_response_bytes`` (8 MiB by default, counted after gzip decoding) with ``kind="response_too_large"``;
* when it gives up it raises :class:`EnvLLMError` with ``kind`` and ``attempts``, and the tokens and cost
  the failed attempts reported (``usage`` on an empty reply is billed); the environment flags the
  episode and the text never reaches the agent. A call that succeeds after failed attempts
  includes their cost in ``Completion.cost_usd``;
* the API key never appears in an exception message, a log line or a ``repr``; a key or header
  with a line break (or another control character) is refused before any request, and a key read
  from ``OPENAI_API_KEY`` loses surrounding whitespace.

The retry loop runs on ``tenacity`` (with this module's policy for waits and stops; the first
attempt runs before tenacity is set up, since most calls need no retry). All requests run on one
event loop owned by the backend (a daemon thread): ``acomplete`` called from any other loop hands
its request over with ``asyncio.run_coroutine_threadsafe`` and awaits the result, because the
SDK's HTTP client is bound to the loop it first ran on; a driver of many calls (the vector env)
can run on that loop itself (:meth:`OpenAIBackend.io_loop_thread`) and skip the hand-over.

Cost per request (it decides throughput at hundreds of requests per second, see
``benchmarks/bench_vector_env.py``): the ``openai`` package is the client, called as
``client.post(path, body=..., cast_to=httpx.Response, stream=True)``: the SDK builds the request,
adds auth and maps errors, but neither transforms the parameters nor builds a pydantic model; we
read the body under the size cap and parse the JSON ourselves. Under it, :class:`_AiohttpTransport`
(an httpx transport that hands the request to one ``aiohttp.ClientSession``: aiohttp's C HTTP
parser, one keep-alive pool of ``max_concurrency`` connections) replaces httpx's default pool,
whose per-request scan of every connection dominated the client's CPU. ``http_transport="httpx"``
(and any proxy from the environment, or a user's ``http_client``) keeps httpx's own transport.
(Here "httpx" is the package the SDK is built on: ``httpx2`` for openai 3.x.)
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

import aiohttp
import openai
import yarl  # aiohttp's URL type (installed with it)
from tenacity import AsyncRetrying, retry_if_exception

from .base import BaseBackend, Completion, EnvLLMError, LoopThread, Message, failed_attempt, validate_messages
from .limits import SharedLimiter, estimate_tokens
from .pricing import check_price, check_prices

__all__ = [
    "SAMPLING_KEYS",
    "OpenAIBackend",
    "ResponseTooLarge",
    "backoff_delay",
    "check_header",
    "cost_usd",
    "parse_chat_payload",
    "parse_retry_after",
    "parse_usage",
    "scrub_secrets",
]

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
#: Sampling keywords forwarded to the server (others are ignored; use ``extra_body`` for server-specific ones).
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed", "stop")
#: Completion tokens assumed for the tokens-per-minute estimate when ``max_tokens`` is not given.
DEFAULT_COMPLETION_ESTIMATE = 256
#: A reply's ``usage`` is believed up to this many times the request's token budget (its prompt's estimate
#: plus ``max_tokens``, or :data:`NO_LIMIT_REPLY_TOKENS` without one), and never below
#: :data:`MIN_USAGE_BOUND`: a count past it is not a count (a server's 400-digit ``prompt_tokens`` would price
#: a call at more dollars than exist).
USAGE_BOUND_FACTOR = 100
#: The reply tokens a request without ``max_tokens`` is assumed to allow, for the usage bound only.
NO_LIMIT_REPLY_TOKENS = 32_768
#: The usage bound of the smallest request (a chat template adds tokens the estimate does not see).
MIN_USAGE_BOUND = 4_096
#: An attempt needs at least this much time left before the deadline to be worth starting.
MIN_ATTEMPT_S = 0.05
#: In-flight requests per HTTP client before another client (connection pool) is added: httpx's
#: pool scans all its connections on every request, so many small pools beat one large one.
REQUESTS_PER_CLIENT = 16
MAX_CLIENTS = 16
#: The HTTP transports under the SDK's client (see :class:`OpenAIBackend`'s ``http_transport``).
HTTP_TRANSPORTS = ("aiohttp", "httpx")

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
    >>> scrub_secrets("connection failed or dropped, or the HTTP response was malformed", limit=45)
    'connection failed or dropped, or the HTTP...'
    """
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    text = _SK_PATTERN.sub(r"\1***", text)
    text = _BEARER_PATTERN.sub(r"\1***", text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut) + "..."  # at a word's end where there is one


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
        content = "".join(p["text"] for p in content
                          if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    if content is not None and not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, expected a string")
    if not content or not content.strip():
        raise LookupError("the reply text is empty")
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    finish = first.get("finish_reason") if isinstance(first.get("finish_reason"), str) else None
    return content, finish, parse_usage(payload), model


def parse_usage(payload: Any, *, bound: int | None = None) -> dict[str, int] | None:
    """``{"prompt_tokens", "completion_tokens"}`` from a reply's ``usage``, or None when it reports none.

    Works on any reply, usable or not: a server bills an empty or cut-off reply too. A count that is not a
    whole number ``>= 0`` (and, with ``bound``, at most ``bound``) is not a count: ``ValueError`` says which
    (the backend makes it a ``malformed_reply`` and counts the call at its estimate).

    >>> parse_usage({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 612}})
    {'prompt_tokens': 40, 'completion_tokens': 612}
    >>> parse_usage({"usage": "n/a"}) is None
    True
    >>> parse_usage({"usage": {"prompt_tokens": 10**400, "completion_tokens": 1}}, bound=10**6)
    Traceback (most recent call last):
    ...
    ValueError: usage prompt_tokens is 1000000000000000000000000000000000000000... (401 digits), not a token count in [0, 1000000]
    """
    usage = payload.get("usage") if isinstance(payload, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    out = {}
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if value is None:
            out[key] = 0
            continue
        ok = not isinstance(value, bool) and isinstance(value, (int, float))
        if ok and isinstance(value, float):
            ok = math.isfinite(value) and value.is_integer()
        if ok:
            ok = value >= 0 and (bound is None or value <= bound)
        if not ok:
            shown = repr(value)
            if isinstance(value, int) and not isinstance(value, bool) and len(shown) > 40:
                shown = f"{shown[:40]}... ({len(shown)} digits)"
            top = "inf" if bound is None else bound
            raise ValueError(f"usage {key} is {shown[:60]}, not a token count in [0, {top}]")
        out[key] = int(value)
    return out


def _finish_reason(payload: Any) -> str | None:
    """``choices[0].finish_reason`` of a reply, if there is one."""
    choices = payload.get("choices") if isinstance(payload, Mapping) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        fr = choices[0].get("finish_reason")
        return fr if isinstance(fr, str) else None
    return None


def _display_url(url: str) -> str:
    """The URL without credentials or query, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


_SECRET_NAME = re.compile(r"(?i)auth|key|token|secret|passw|cookie|sig|credential|session")


def _identity_url(url: str) -> str:
    """``url`` without user info, and with the values of secret-looking query parameters masked.

    >>> _identity_url("https://user:pw@example.com:8443/v1?api-version=2024-06-01&api_key=sk-123")
    'https://example.com:8443/v1?api-version=2024-06-01&api_key=***'
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = urllib.parse.urlencode(
        [(k, "***" if _SECRET_NAME.search(k) else v)
         for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, query, ""))


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON types (sorted mapping keys; anything else becomes its ``repr``)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return repr(value)


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


def _request_option_defaults() -> dict[str, Any]:
    """The SDK's request-option fields whose default is a sentinel or a constant mapping, with that default.

    ``client.post`` builds its options with pydantic's ``model_construct``, which deep-copies every default it fills
    in: about a tenth of the client's CPU per request at 128 calls in flight (a profile of
    ``benchmarks/bench_vector_env.py``). Passing the same values explicitly skips the copies; the SDK only reads
    them. Fields the installed SDK does not have are left out."""
    try:
        from openai._models import FinalRequestOptions
        from openai._types import NotGiven
    except ImportError:  # pragma: no cover - another SDK layout: let it fill its defaults
        return {}
    out: dict[str, Any] = {}
    for name in ("headers", "max_retries", "post_parser", "security"):
        field = FinalRequestOptions.model_fields.get(name)
        if field is None or field.default_factory is not None:
            continue
        if isinstance(field.default, NotGiven) or (name == "security" and isinstance(field.default, dict)):
            out[name] = field.default
    return out


_REQUEST_OPTION_DEFAULTS = _request_option_defaults()


def _httpx_limits(max_connections: int, keepalive: int):
    """An httpx ``Limits`` for the SDK's own connection pool, or None."""
    try:
        return _httpx.Limits(max_connections=max_connections, max_keepalive_connections=keepalive)
    except Exception:  # pragma: no cover - unexpected httpx API
        return None


# ---------------------------------------------------------------------------------------------
# header checks and the reply size cap
# ---------------------------------------------------------------------------------------------
#: Largest reply body accepted by default (after gzip/deflate decoding), in bytes.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
#: Idle keep-alive connections older than this are closed rather than reused (as httpx does), so
#: a request does not race a server that drops idle connections.
KEEPALIVE_EXPIRY_S = 5.0

# RFC 9110 section 5: a field name is a token; a field value is visible characters, spaces and tabs.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HEADER_BAD_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _control_char_note(value: str) -> str:
    """Which control character a value holds and where, without showing the value itself."""
    m = _HEADER_VALUE_BAD.search(value)
    if m is None:  # pragma: no cover - only called on a value that has one
        return "a control character"
    return f"{m.group()!r} at position {m.start()} of {len(value)}"


def check_header(name: str, value: str, *, what: str | None = None) -> None:
    """Raise ``ValueError`` unless ``name: value`` is one well-formed header line.

    A CR or LF in a value would end the header early and let the rest be read as further header lines
    (header injection); a trailing newline is typical of a key pasted from a file. The message never
    shows the value, since it may be a secret.

    >>> check_header("X-Team", "research")
    >>> check_header("Authorization", "Bearer sk-abc\\n")
    Traceback (most recent call last):
    ...
    ValueError: header 'Authorization' has a control character in its value ('\\n' at position 13 of 14); a header value must be a single line of visible characters: remove line breaks (strip() a value read from a file).
    """
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise ValueError(f"header name {str(name)[:40]!r} is not a valid HTTP header name (letters, digits and "
                         "!#$%&'*+-.^_`|~ only).")
    if not isinstance(value, str):
        raise TypeError(f"header {name!r} must have a str value, got {type(value).__name__}.")
    if _HEADER_VALUE_BAD.search(value):
        raise ValueError(f"{what or f'header {name!r}'} has a control character in its value "
                         f"({_control_char_note(value)}); a header value must be a single line of visible "
                         "characters: remove line breaks (strip() a value read from a file).")


def _check_headers(headers: Any, what: str) -> None:
    """:func:`check_header` on every item of a mapping (or httpx ``Headers``); ``None`` and omitted values pass."""
    if not headers:
        return
    for k, v in headers.items():
        if v is None or type(v).__name__ == "Omit":  # the SDK's way of removing a default header
            continue
        check_header(str(k), str(v), what=f"header {str(k)!r} ({what})")


class ResponseTooLarge(Exception):
    """A reply body over ``max_response_bytes`` (raised while reading it; the backend makes it an env error)."""

    def __init__(self, limit: int, seen: int, how: str) -> None:
        super().__init__(f"the reply body is larger than max_response_bytes={limit} ({how} {seen} bytes)")
        self.limit, self.seen, self.how = limit, seen, how


# ---------------------------------------------------------------------------------------------
# the HTTP transport: the SDK's httpx client on top of aiohttp
# ---------------------------------------------------------------------------------------------
_SKIP_REQUEST_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class _AiohttpBody(_httpx.AsyncByteStream):
    """An aiohttp response body handed to httpx as it arrives (httpx decodes gzip etc. above it).

    Counts the bytes on the wire and stops at ``limit`` (the backend counts decoded bytes too). Closing it
    returns a fully read connection to aiohttp's pool, and drops one that was not read to its end.
    """

    __slots__ = ("_limit", "_resp")

    def __init__(self, resp, limit: int) -> None:
        self._resp = resp
        self._limit = limit

    async def __aiter__(self):
        content = self._resp.content
        seen = 0
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                seen += len(chunk)
                if seen > self._limit:
                    raise ResponseTooLarge(self._limit, seen, "read at least")
                yield chunk
        except aiohttp.ClientError as e:
            raise _map_aiohttp_error(e) from None
        except asyncio.TimeoutError:  # aiohttp's sock_read timeout outside a ClientError subclass
            raise _httpx.ReadTimeout("no data within the read timeout") from None

    async def aclose(self) -> None:
        self._resp.release()


def _map_aiohttp_error(e: BaseException) -> Exception:
    """The httpx exception for an aiohttp one, so the SDK maps it (timeout / connection error) as with httpx."""
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        return _httpx.ConnectTimeout(text)
    if isinstance(e, aiohttp.ServerTimeoutError):
        return _httpx.ReadTimeout(text)
    if isinstance(e, aiohttp.ClientConnectorError):
        return _httpx.ConnectError(text)
    if isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        return _httpx.RemoteProtocolError(text)  # dropped mid-reply, or a malformed status line/header/body framing
    return _httpx.ReadError(text)


class _AiohttpTransport(_httpx.AsyncBaseTransport):
    """The bytes on the wire for the SDK's httpx client, through one aiohttp ``ClientSession``.

    The SDK stays the client (URL, headers, auth, error mapping); aiohttp sends the request and parses the
    response with its C parser (llhttp), on one keep-alive pool of ``max_connections`` connections. Errors
    come out as httpx's (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``), so
    the SDK and the backend's retry policy treat them as before. Every header is checked for control
    characters before anything is sent. HTTP and HTTPS (with the SSL context httpx would use); no proxies
    (the backend keeps httpx's own transport when one is configured).
    """

    def __init__(self, max_connections: int, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S) -> None:
        self.max_connections = max(1, int(max_connections))
        self.max_response_bytes = int(max_response_bytes)
        self.keepalive_expiry_s = float(keepalive_expiry_s)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple, aiohttp.ClientTimeout] = {}
        self._closed = False

    def _new_session(self) -> aiohttp.ClientSession:
        try:
            ssl_ctx = _httpx.create_ssl_context()  # honours SSL_CERT_FILE like httpx
        except Exception:  # pragma: no cover - an httpx without it: aiohttp's default verification
            ssl_ctx = True
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=self.keepalive_expiry_s,
                                         ssl=ssl_ctx, ttl_dns_cache=300)
        return aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None), raise_for_status=False, requote_redirect_url=False,
        )

    def _timeout(self, t: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        key = (t.get("connect"), t.get("read"), t.get("pool"))
        out = self._timeouts.get(key)
        if out is None:
            if len(self._timeouts) > 256:
                self._timeouts.clear()
            connect, read, pool = key
            out = aiohttp.ClientTimeout(total=None, connect=None if connect is None else connect + (pool or 0.0),
                                        sock_connect=connect, sock_read=read)
            self._timeouts[key] = out
        return out

    async def handle_async_request(self, request):
        if self._closed:
            raise RuntimeError("the HTTP transport is closed")
        headers = []
        for k, v in request.headers.raw:
            if _HEADER_BAD_BYTES.search(k) or _HEADER_BAD_BYTES.search(v):
                name = k.decode("latin-1")
                raise ValueError(f"header {name[:40]!r} has a control character (CR, LF ...) in its name or value; "
                                 "the request was not sent. Remove line breaks from header values and keys.")
            if k.lower().decode("latin-1") not in _SKIP_REQUEST_HEADERS:
                headers.append((k.decode("latin-1"), v.decode("latin-1")))
        session = self._session
        if session is None or session.closed:
            session = self._session = self._new_session()
        body = await request.aread()
        timeout = self._timeout(request.extensions.get("timeout") or {})
        url = yarl.URL(str(request.url), encoded=True)
        try:
            resp = await session.request(request.method, url, headers=headers, data=body or None,
                                         timeout=timeout, allow_redirects=False)
        except aiohttp.ClientError as e:
            raise _map_aiohttp_error(e) from None
        except asyncio.TimeoutError:
            raise _httpx.ConnectTimeout("no connection within the connect timeout") from None
        return _httpx.Response(
            resp.status, headers=resp.raw_headers, stream=_AiohttpBody(resp, self.max_response_bytes),
            extensions={"http_version": b"HTTP/%d.%d" % tuple(resp.version),
                        "reason_phrase": (resp.reason or "").encode("latin-1", "replace")},
        )

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


def _env_proxy_applies(url: str) -> bool:
    """Whether a proxy from the environment (``HTTPS_PROXY`` ...) would apply to ``url`` for httpx."""
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies)


def _shutdown_loop_thread(lt: LoopThread, transports: Sequence[_AiohttpTransport] = ()) -> None:
    """Close ``transports``, stop a backend's loop thread and release its executor threads (best effort, idempotent)."""
    loop = lt.loop
    if loop.is_closed():
        return
    thread = getattr(lt, "_thread", None)
    open_ones = [t for t in transports if not t._closed]
    if open_ones and loop.is_running() and thread is not threading.current_thread():
        async def _close_all():
            await asyncio.gather(*(t.aclose() for t in open_ones), return_exceptions=True)
        try:
            asyncio.run_coroutine_threadsafe(_close_all(), loop).result(timeout=2)
        except Exception as e:  # pragma: no cover - best effort (e.g. at interpreter exit)
            log.debug("could not close the backend's HTTP transport: %r", e)
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
        http_transport: ``"aiohttp"`` (default): the SDK's requests go through one aiohttp keep-alive
            pool sized for the concurrency (much less CPU per request than httpx's default pool);
            ``"httpx"``: httpx's own pools. A proxy from the environment (``HTTPS_PROXY`` ...) or an
            ``http_client=`` always uses httpx's. ``lean_http=False`` is an old spelling of ``"httpx"``.
        max_response_bytes: the largest reply body accepted (after gzip decoding; default 8 MiB): a
            larger one fails the call at once with ``kind="response_too_large"``.
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
        http_transport: str = "aiohttp",
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        lean_http: bool | None = None,
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
        if lean_http is not None:  # the old switch: True = the fast pooled transport, False = httpx's
            http_transport = "aiohttp" if lean_http else "httpx"
        if http_transport not in HTTP_TRANSPORTS:
            raise ValueError(f"http_transport must be one of {', '.join(map(repr, HTTP_TRANSPORTS))}, "
                             f"got {http_transport!r}.")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be a positive number of bytes (default "
                             f"{DEFAULT_MAX_RESPONSE_BYTES}), got {max_response_bytes!r}.")
        self.model = model.strip()
        # values read from the environment lose surrounding whitespace (a key pasted from a file ends in "\n")
        env_url = (os.environ.get("OPENAI_BASE_URL") or "").strip()
        self.base_url = (base_url or env_url or OPENAI_BASE_URL).rstrip("/")
        try:
            userinfo = "@" in (urllib.parse.urlsplit(self.base_url).netloc or "")
        except ValueError:
            userinfo = False
        if userinfo:  # the SDK's Authorization header and the URL's would clash on every call; never shown
            where = "base_url=..." if base_url else "the OPENAI_BASE_URL environment variable"
            shown = _display_url(self.base_url)
            raise ValueError(f"the server URL from {where} ({shown}, credentials hidden) carries a user name "
                             "or password (user:password@host): that fails every call. Remove it from the "
                             "URL and give the key as api_key=... or OPENAI_API_KEY (a proxy's login: "
                             "default_headers={'Proxy-Authorization': ...}).")
        key = api_key or (os.environ.get("OPENAI_API_KEY") or "").strip()
        if not key:
            if _is_openai_host(self.base_url):
                raise ValueError(
                    f"OpenAIBackend({self.model!r}) talks to {_display_url(self.base_url)} but no API key was "
                    "given: set the OPENAI_API_KEY environment variable or pass api_key=..., or point "
                    "base_url / OPENAI_BASE_URL at a local server (vLLM, llama.cpp, Ollama)."
                )
            key = "EMPTY"
        if not isinstance(key, str):
            raise TypeError(f"api_key must be a str, got {type(key).__name__}.")
        if _HEADER_VALUE_BAD.search(key):  # it goes into the Authorization header: reject before any request
            where = "api_key=..." if api_key else "the OPENAI_API_KEY environment variable"
            raise ValueError(f"the API key from {where} has a control character ({_control_char_note(key)}), "
                             "which would break the Authorization header; remove the line break (e.g. "
                             "api_key=key.strip()).")
        _check_headers(client_kwargs.get("default_headers"), "default_headers")
        for k in ("organization", "project"):
            v = client_kwargs.get(k)
            if isinstance(v, str):
                check_header(k, v, what=f"{k}=...")
        self._api_key = key
        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.limiter = limiter if limiter is not None else SharedLimiter(max_concurrency, rpm, tpm)
        if isinstance(price_per_1k, Mapping):  # finite and >= 0: a negative or infinite price breaks totals
            price_per_1k = check_prices(price_per_1k, what="price_per_1k")
        elif price_per_1k is not None:
            price_per_1k = check_price(price_per_1k, what="price_per_1k")
        self.price_per_1k = price_per_1k
        self.default_sampling = dict(default_sampling or {})
        self.extra_body = dict(extra_body or {})
        self.seed = seed
        self.http_transport = http_transport
        self.max_response_bytes = int(max_response_bytes)
        self._client_kwargs = dict(client_kwargs)
        self._init_runtime()

    # --- runtime state (not pickled) ----------------------------------------------------------
    def _init_runtime(self) -> None:
        self._loop_thread = None
        self._loop_lock = threading.Lock()
        self._pid = os.getpid()
        self._clients: list = []
        self._client_load: list[int] = []
        self._transport: _AiohttpTransport | None = None
        self._live_transports: list[_AiohttpTransport] = []
        self._rng = random.Random(self.seed)
        self._stats_lock = threading.Lock()
        self._stats: Counter = Counter()
        self._fail_kinds: Counter = Counter()
        self._error_kinds: Counter = Counter()
        self._warned_keys: set[str] = set()
        self._key_prefix = f"promptr1-{os.urandom(6).hex()}"
        self._key_counter = itertools.count(1)

    def __getstate__(self) -> dict[str, Any]:
        drop = {"_loop_thread", "_loop_lock", "_clients", "_client_load", "_transport", "_live_transports", "_rng", "_stats_lock", "_stats", "_fail_kinds",
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
                self._live_transports = []
                self._key_prefix = f"promptr1-{os.urandom(6).hex()}"  # a forked child draws its own
                # a forgotten backend does not leave its loop thread (or its open connections) behind
                weakref.finalize(self, _shutdown_loop_thread, self._loop_thread, self._live_transports)
            return self._loop_thread.loop

    def io_loop_thread(self) -> LoopThread:
        """The loop thread every request of this backend runs on (started on first use).

        A driver that runs many ``acomplete`` calls (the vector env) can run its own coroutines
        on this loop: each call then skips the hand-over to the backend's loop and back (two
        thread wake-ups). ``close()`` stops it.
        """
        self._io_loop()
        return self._loop_thread

    def _uses_aiohttp(self) -> bool:
        """Whether requests go through the aiohttp transport (not with a proxy or a user's ``http_client``)."""
        return (self.http_transport == "aiohttp" and "http_client" not in self._client_kwargs
                and not _env_proxy_applies(self.base_url))

    def _new_client(self, n_clients: int):
        kwargs = dict(self._client_kwargs)
        if "http_client" not in kwargs:
            maxc = self.limiter.max_concurrency
            if self._uses_aiohttp():
                # one client, one pool with a keep-alive connection for every request in flight
                self._transport = _AiohttpTransport(max(1, maxc), self.max_response_bytes)
                self._live_transports.append(self._transport)
                kwargs["http_client"] = openai.DefaultAsyncHttpxClient(transport=self._transport)
            else:
                limits = _httpx_limits(max(maxc, 10), max(8, 2 * math.ceil(maxc / n_clients)))
                if limits is not None:
                    kwargs["http_client"] = openai.DefaultAsyncHttpxClient(limits=limits)
        client = openai.AsyncOpenAI(
            api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout_s, **kwargs
        )
        # every header the SDK will send (auth, organization, defaults, a user's client's own), checked once
        _check_headers(client.default_headers, "the client's default headers")
        user_client = self._client_kwargs.get("http_client")
        if user_client is not None:
            _check_headers(getattr(user_client, "headers", None), "http_client.headers")
        return client

    def _acquire_client(self) -> int:
        """Index of the least-loaded HTTP client (created on first use, on the backend's loop)."""
        clients = self._clients
        if not clients:
            if self._uses_aiohttp() or "http_client" in self._client_kwargs:
                n = 1  # aiohttp's pool has no per-request scan; a user's client cannot be duplicated
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

    def cache_identity(self) -> dict[str, Any]:
        """What besides the messages and the call's sampling can change a reply (for a response cache's key).

        The server (``base_url`` without credentials; secret-looking query values masked), the extra request
        fields (``extra_body``), the default sampling fields beyond :data:`SAMPLING_KEYS`, and the headers sent
        with every request except auth ones. Never the API key. JSON-safe: values JSON cannot hold become
        their ``repr``.
        """
        ident: dict[str, Any] = {"base_url": _identity_url(self.base_url)}
        if self.extra_body:
            ident["extra_body"] = _json_safe(self.extra_body)
        extra_sampling = {k: v for k, v in self.default_sampling.items() if k not in SAMPLING_KEYS}
        if extra_sampling:
            ident["default_sampling_extra"] = _json_safe(extra_sampling)
        headers = self._client_kwargs.get("default_headers") or {}
        kept = {str(k): str(v) for k, v in headers.items()
                if isinstance(v, str) and not _SECRET_NAME.search(str(k))}
        if kept:
            ident["default_headers"] = dict(sorted(kept.items()))
        return ident

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
        prompt_est = sum(estimate_tokens(m["content"]) for m in msgs)
        st["estimate"] = (prompt_est, est_tokens - prompt_est)  # what a reply with garbage usage counts
        st["usage_bound"] = max(MIN_USAGE_BOUND, USAGE_BOUND_FACTOR * (
            prompt_est + int(params.get("max_tokens") or NO_LIMIT_REPLY_TOKENS)))

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
        cost = self._price(p_tok, c_tok, server_model)
        failed = st.get("failed_usage")  # what earlier failed attempts were billed for: part of this call's cost
        if failed is not None and failed[2]:
            cost = round((cost or 0.0) + failed[2], 12)
        errors = st["errors"]
        with self._stats_lock:
            stats = self._stats
            stats["calls"] += 1
            stats["ok"] += 1
            stats["attempts"] += n
            stats["retries"] += n - 1
            stats["prompt_tokens"] += p_tok
            stats["completion_tokens"] += c_tok
            if failed is not None:
                stats["prompt_tokens"] += failed[0]
                stats["completion_tokens"] += failed[1]
            stats["latency_ms_total"] += int(elapsed * 1000)
            if cost:
                stats["cost_usd_micros"] += int(round(cost * 1e6))
            if errors:
                self._error_kinds.update(errors)
        extra = {
            "retries": n - 1,
            "errors": list(errors),
            "queue_s": (st["first_start"] or t_enter) - t_enter,
            "request_latency_s": req_latency,
            "finish_reason": finish,
            "usage_estimated": estimated,
        }
        if failed is not None:  # the tokens above are this reply's; these were billed for the failed attempts
            extra["failed_attempts_usage"] = {"prompt_tokens": failed[0], "completion_tokens": failed[1],
                                              "cost_usd": failed[2]}
        return Completion(
            text=text,
            latency_s=elapsed,
            prompt_tokens=p_tok,
            completion_tokens=c_tok,
            cost_usd=cost,
            attempts=n,
            model=server_model or self.model,
            extra=extra,
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
        if stop_reason in ("deadline", "budget"):
            kind = stop_reason
        why = {
            "attempts": f"after {n} attempt(s) (max_retries={self.max_retries})",
            "deadline": f"within the deadline of {self.deadline_s:g} s ({n} attempt(s))",
            "budget": f"after {n} attempt(s), not retried: {st.get('budget_stop')}",
        }.get(stop_reason, f"after {n} attempt(s), not retryable")
        msg = scrub_secrets(
            f"openai:{self.model} at {_display_url(self.base_url)} failed {why} in {elapsed:.2f} s; "
            f"last error {failure.kind}: {failure.detail}",
            [self._api_key], limit=2000,  # kept whole: its parts are bounded already (detail: 300 characters)
        )
        fp, fc, fcost = st.get("failed_usage") or (0, 0, 0.0)
        if fp or fc:
            msg += f" (the failed attempts were billed {fp} prompt + {fc} completion tokens)"
        with self._stats_lock:
            self._stats.update(calls=1, failures=1, attempts=n, retries=max(0, n - 1),
                               latency_ms_total=int(elapsed * 1000), prompt_tokens=fp, completion_tokens=fc,
                               cost_usd_micros=int(round(fcost * 1e6)))
            self._fail_kinds[kind] += 1
            self._error_kinds.update(st["errors"])
        log.info("%s", msg)
        err = EnvLLMError(msg, kind=kind, attempts=n, retryable=failure.retryable, prompt_tokens=fp,
                          completion_tokens=fc, cost_usd=fcost)
        err.errors = list(st["errors"])  # kinds of every failed attempt
        err.status = failure.status
        return err

    async def _attempt(self, params: dict[str, Any], est_tokens: int, st: dict[str, Any]):
        """One HTTP request: returns ``(text, finish, usage, model, seconds)`` or raises ``_AttemptError``."""
        try:
            try:
                return await self._attempt_inner(params, est_tokens, st)
            except (_AttemptError, asyncio.CancelledError):
                raise
            except Exception as e:  # noqa: BLE001 - whatever a reply does, the call fails with a kind
                detail = f"{type(e).__name__}: {scrub_secrets(str(e), [self._api_key], limit=300)}"
                raise _AttemptError("error", detail, retryable=False) from None
        except _AttemptError as e:
            st["errors"].append(e.kind)
            # whoever pays (a budget) is told what this attempt was billed for, and may forbid a retry
            stop = failed_attempt(*st.pop("attempt_billed", (0, 0, 0.0)))
            if stop is not None and e.retryable:
                e.retryable = False
                st["stop"], st["budget_stop"] = "budget", stop
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
                # stream=True: the SDK hands back the response unread, and _read_body reads it under the size cap
                request = client.post("/chat/completions", body=params, cast_to=_httpx.Response, stream=True,
                                      options={**_REQUEST_OPTION_DEFAULTS, "timeout": per_try,
                                               "idempotency_key": st["key"]})
                if _asyncio_timeout is not None:  # a guard behind the SDK's own timeout; no extra task
                    async with _asyncio_timeout(per_try + 0.05):
                        body = await self._read_body(await request)
                else:  # pragma: no cover - Python 3.10
                    body = await asyncio.wait_for(self._read_body_of(request), timeout=per_try + 0.05)
            except (asyncio.TimeoutError, openai.APITimeoutError, _httpx.TimeoutException):
                raise _AttemptError(timeout_kind, f"no reply within {per_try:.2f} s", retryable=not cut) from None
            except ResponseTooLarge as e:
                raise _AttemptError(
                    "response_too_large",
                    f"{e}; a chat reply is rarely more than a few hundred KB, so the server (or something between "
                    "it and us) sent something else. If the replies are legitimately this large, raise "
                    "OpenAIBackend(max_response_bytes=...)", retryable=False) from None
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
            except (openai.APIConnectionError, _httpx.TransportError) as e:
                cause = e.__cause__ if isinstance(e, openai.APIConnectionError) else e
                why = f" ({type(cause).__name__}: {scrub_secrets(str(cause), [self._api_key], limit=200)})" if cause else ""
                raise _AttemptError("connection", f"{type(e).__name__}: connection failed or dropped, or the "
                                    f"HTTP response was malformed{why}", retryable=True) from None
            except _httpx.DecodingError:
                raise _AttemptError("malformed_reply", "the reply body could not be decoded (Content-Encoding)",
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
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: 100k nested '['
                raise _AttemptError("malformed_reply", f"the reply is not valid JSON ({len(body)} bytes)",
                                    retryable=True) from None
            try:
                parse_usage(payload, bound=st["usage_bound"])
            except ValueError as e:  # billed, but for what is unknown: count the request's estimate
                p_est, c_est = st["estimate"]
                log.warning("openai:%s replied with a usage that is not a token count (%s); the call is "
                            "counted at its estimate, %d prompt + %d completion tokens",
                            self.model, e, p_est, c_est)
                self._add_failed_usage(st, {"prompt_tokens": p_est, "completion_tokens": c_est}, payload)
                slot.report_tokens(p_est + c_est)
                raise _AttemptError("malformed_reply", f"the reply's {e}", retryable=True) from None
            try:
                text, finish, usage, model = parse_chat_payload(payload)
            except (LookupError, ValueError) as e:
                failed_usage = parse_usage(payload)
                if failed_usage is not None:  # billed although it failed: count it (budget, stats, the limiter)
                    self._add_failed_usage(st, failed_usage, payload)
                    slot.report_tokens(failed_usage["prompt_tokens"] + failed_usage["completion_tokens"])
                if isinstance(e, LookupError):
                    if _finish_reason(payload) == "length":  # it would fail the same way again: no retry
                        spent = "" if failed_usage is None else f" after {failed_usage['completion_tokens']} completion tokens"
                        mt = params.get("max_tokens")
                        raise _AttemptError(
                            "max_tokens",
                            f"the server stopped at the token limit (finish_reason 'length'{spent}) before writing "
                            f"any reply text: max_tokens={mt if mt is not None else 'the server default'} is too "
                            "small for the reply (reasoning models spend tokens before answering); raise max_tokens",
                            retryable=False) from None
                    raise _AttemptError("empty_reply", str(e), retryable=True) from None
                raise _AttemptError("malformed_reply", scrub_secrets(str(e), [self._api_key], limit=300),
                                    retryable=True) from None
            if usage is not None:
                slot.report_tokens(usage["prompt_tokens"] + usage["completion_tokens"])
            return text, finish, usage, model, seconds

    async def _read_body_of(self, request) -> bytes:  # pragma: no cover - Python 3.10
        return await self._read_body(await request)

    async def _read_body(self, raw) -> bytes:
        """The whole (decoded) body of a streamed response, or ``ResponseTooLarge`` past ``max_response_bytes``."""
        limit = self.max_response_bytes
        try:
            length = raw.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise ResponseTooLarge(limit, int(length), "Content-Length")
            chunks = []
            seen = 0
            async for chunk in raw.aiter_bytes():  # decodes gzip/deflate/br piece by piece
                seen += len(chunk)
                if seen > limit:
                    raise ResponseTooLarge(limit, seen, "decoded at least")
                chunks.append(chunk)
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            await raw.aclose()

    def _price(self, p_tok: int, c_tok: int, server_model: str | None) -> float | None:
        cost = cost_usd(self.model, p_tok, c_tok, self.price_per_1k)
        if cost is None and server_model and server_model != self.model:
            cost = cost_usd(server_model, p_tok, c_tok, self.price_per_1k)
        return cost

    def _add_failed_usage(self, st: dict[str, Any], usage: Mapping[str, int], payload: Any) -> None:
        """Add what a failed attempt was billed for to the call's running total (``st["failed_usage"]``)."""
        server_model = payload.get("model") if isinstance(payload, Mapping) else None
        p, c = usage["prompt_tokens"], usage["completion_tokens"]
        cost = self._price(p, c, server_model if isinstance(server_model, str) else None) or 0.0
        fp, fc, fcost = st.get("failed_usage", (0, 0, 0.0))
        st["failed_usage"] = (fp + p, fc + c, round(fcost + cost, 12))
        st["attempt_billed"] = (p, c, cost)
