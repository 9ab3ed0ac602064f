"""``promptr1 serve``: a trained agent in front of an env LLM, as an OpenAI-compatible HTTP endpoint.

``POST /v1/chat/completions`` (``stream: true`` too), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` and
``GET /`` (a page to try it). A request's last user message is the question; the agent plays the multi-turn
collaboration with the env LLM and the response's assistant message is its final answer, in OpenAI's response
schema, so the official ``openai`` client works unchanged. docs/serving.md documents the protocol, the limits and
how to scale out.

Episodes are played by the one episode engine: an in-process agent (transformers) runs one open
:func:`~promptr1.agents.rollout.arun_episodes` loop that every request's episode joins through an
:class:`~promptr1.agents.rollout.EpisodeFeed`, so concurrent requests share the agent's forward passes while their
env-LLM calls overlap; an agent behind an OpenAI-compatible server (``--agent openai:MODEL``, e.g. vLLM) is played
by :class:`~promptr1.evaluation.policies.TextPolicyPlayer`, and that server batches the requests.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import pathlib
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from promptr1.commands.cli import run_command
from promptr1.core.settings import ConfigError, ParsedSettings, RunSettings

__all__ = ["ServeConfig", "serve_main"]

log = logging.getLogger("promptr1.serve")

#: Where the key of an agent behind an OpenAI-compatible server comes from (``--agent openai:MODEL``).
AGENT_KEY_ENV = "PROMPTR1_AGENT_API_KEY"
#: Where its URL comes from when ``agent_base_url`` is empty.
AGENT_URL_ENV = "PROMPTR1_AGENT_BASE_URL"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig(RunSettings):
    """``promptr1 serve``: the agent in front of the env LLM, as an OpenAI-compatible endpoint."""

    #: Shared settings a server does not use (no task files, no score, nothing written): left out of
    #: ``promptr1 serve --help`` and refused on its command line (``model`` is given as ``--agent``).
    IGNORED_SETTINGS: ClassVar[tuple[str, ...]] = (
        "model", "tasks", "reward_variant", "answer_metric", "cost_weight", "cost_reference_usd", "output_dir",
        "overwrite", "progress",
    )
    HEADING: ClassVar[str] = "server (the agent, where it listens, who may call it, the limits on each request)"
    ORDER: ClassVar[int] = 1

    agent: str = ""
    """The agent: a training run folder (its latest checkpoint), an HF id or folder, ``smollm2``, or
    ``openai:MODEL`` (the agent behind an OpenAI-compatible server such as vLLM, see ``agent_base_url``); empty: the
    ``model`` setting of a ``--config`` file, else ``smollm2``."""
    agent_base_url: str = ""
    """With ``--agent openai:MODEL``: the agent server's root with ``/v1``; empty: ``$PROMPTR1_AGENT_BASE_URL``. Its
    key, if it needs one, comes from ``$PROMPTR1_AGENT_API_KEY``."""
    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0``: every interface; then set API keys)."""
    port: int = 8000
    """Port to listen on (0: a free port chosen by the system; the first line printed says which)."""
    served_model_name: str = "prompt-r1"
    """The model id ``/v1/models`` lists and requests name (with ``env_models``, a request may name one of those
    instead, to make it the default env LLM of its episode)."""
    api_keys_env: str = "PROMPTR1_API_KEYS"
    """Environment variable holding the accepted API keys, comma-separated (requests send ``Authorization: Bearer
    KEY``); with no key anywhere, no key is asked for."""
    api_key_file: str = ""
    """A file of accepted API keys, one a line (``#`` starts a comment), added to those of ``api_keys_env``."""
    max_body_bytes: int = 1_048_576
    """Largest request body accepted, in bytes (larger: 413)."""
    request_timeout_s: float = 300.0
    """Deadline of one request, from arrival to answer (past it: 504); also how long SIGTERM waits for requests in
    flight."""
    max_in_flight: int = 64
    """Episodes in play at once; a request past it gets 429 with ``Retry-After``."""
    max_request_cost: float | None = None
    """USD one request may spend on the env LLM (a request may ask for less with ``max_cost``); none: no cap. The
    shared ``max_cost`` caps the whole server's spending."""

    def __post_init__(self) -> None:
        """Reject server settings no run can use, when the settings are made."""
        super().__post_init__()
        self.agent = (self.agent or self.model).strip()
        if self.agent.startswith("openai:") and not self.agent.partition(":")[2].strip():
            raise ConfigError("--agent openai:MODEL needs the model's name on the agent server, e.g. "
                              "--agent openai:my-agent.")
        if isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535 (0: a free port); got {self.port!r}.")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"--max-body-bytes must be >= 1024; got {self.max_body_bytes!r}.")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"--request-timeout-s must be > 0 seconds; got {self.request_timeout_s!r}.")
        if isinstance(self.max_in_flight, bool) or self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight must be a whole number >= 1; got {self.max_in_flight!r}.")
        if self.max_request_cost is not None and self.max_request_cost < 0:
            raise ConfigError(f"--max-request-cost must be >= 0 USD (or left out); got {self.max_request_cost!r}.")
        if not self.served_model_name.strip():
            raise ConfigError("--served-model-name must not be empty (e.g. prompt-r1).")


# ----------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered in OpenAI's error JSON: ``{"error": {"message", "type", "code", "param"}}``."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_request")


def env_error_status(env_error: str, request_budget_hit: bool) -> ApiError:
    """The HTTP error for an episode the env LLM failed (``env_error`` is ``"kind: message"``): the env LLM's rate
    limit 503 (with ``Retry-After``), its timeouts 504, a spent budget 503 (the server's) or 402 (the request's),
    anything else 502. Never an answer: the agent did not get the reply it needed.

    >>> env_error_status("server_error: HTTP 500", False).status, env_error_status("timeout: slow", False).status
    (502, 504)
    >>> env_error_status("budget: max_cost=1 reached", True).code
    'request_max_cost_reached'
    """
    kind = env_error.partition(":")[0].strip()
    text = f"the env LLM failed, so there is no answer: {env_error}"
    if kind == "budget":
        if request_budget_hit:
            return ApiError(402, "this request's max_cost was reached before the agent answered; allow more with "
                                 "the request's max_cost (up to the server's --max-request-cost).",
                            type_="insufficient_quota", code="request_max_cost_reached")
        return ApiError(503, "the server's env-LLM budget (--max-cost / --max-calls) is spent; no more requests "
                             "are served until it is restarted with a new budget.",
                        type_="insufficient_quota", code="server_budget_exhausted")
    if kind == "rate_limit":
        return ApiError(503, text, type_="server_error", code="env_llm_rate_limited", headers={"Retry-After": "5"})
    if kind in ("timeout", "deadline"):
        return ApiError(504, text, type_="server_error", code="env_llm_timeout")
    return ApiError(502, text, type_="server_error", code="env_llm_error")


# ----------------------------------------------------------------------------- requests


@dataclass
class ChatRequest:
    """What the server takes from a ``/v1/chat/completions`` body."""

    question: str
    model: str | None
    stream: bool
    transcript: bool
    max_cost: float | None


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"{where}: only text content is served (a string, or parts of type 'text').", "messages")
            texts.append(part["text"])
        return "\n".join(texts)
    raise _bad(f"{where}: content must be a string or a list of text parts.", "messages")


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body; raises :class:`ApiError` (400) saying what was expected.

    The last user message is the question; earlier user and assistant messages reach the agent inside it, as the
    conversation so far (the agent's own chat is its collaboration with the env LLM); system messages are not
    passed on (the framing writes the agent's).

    >>> r = parse_chat_request(b'{"model": "m", "messages": [{"role": "user", "content": "Hi?"}], "stream": true}')
    >>> r.question, r.stream, r.transcript
    ('Hi?', True, False)
    >>> parse_chat_request(b'{"messages": [{"role": "system", "content": "x"}]}')
    Traceback (most recent call last):
    ...
    promptr1.commands.serve.ApiError: no user message: send the question as the last message with role 'user'.
    """
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the request body is not valid JSON ({exc}); send a JSON object with 'model' and 'messages'.")
    if not isinstance(data, dict):
        raise _bad("the request body must be a JSON object with 'model' and 'messages'.")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {'role', 'content'} objects.", "messages")
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a 'role' and a 'content'.", "messages")
        if m["role"] in ("user", "assistant"):
            turns.append((m["role"], _text_of(m.get("content") or "", f"messages[{i}]")))
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last_user is None or not turns[last_user][1].strip():
        raise _bad("no user message: send the question as the last message with role 'user'.", "messages")
    question = turns[last_user][1].strip()
    earlier = [(role, text.strip()) for role, text in turns[:last_user] if text.strip()]
    if earlier:
        lines = "\n".join(f"{role}: {text}" for role, text in earlier)
        question = f"{question}\n(The conversation so far:\n{lines})"
    n = data.get("n", 1)
    if n != 1:
        raise _bad(f"n must be 1 (one answer a request); got {n!r}.", "n")
    stream = data.get("stream", False)
    transcript = data.get("transcript", False)
    for name, value in (("stream", stream), ("transcript", transcript)):
        if not isinstance(value, bool):
            raise _bad(f"'{name}' must be true or false; got {value!r}.", name)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad(f"'model' must be a string; got {model!r}.", "model")
    max_cost = data.get("max_cost")
    if max_cost is not None and (isinstance(max_cost, bool) or not isinstance(max_cost, (int, float))
                                 or not max_cost >= 0):
        raise _bad(f"'max_cost' must be a number of USD >= 0; got {max_cost!r}.", "max_cost")
    return ChatRequest(question=question, model=model or None, stream=stream, transcript=transcript,
                       max_cost=None if max_cost is None else float(max_cost))


# ----------------------------------------------------------------------------- agents

Listener = Callable[[str, Any, str], None]


class LocalAgent:
    """The agent in process: one open :func:`~promptr1.agents.rollout.arun_episodes` loop; every request's episode
    joins it, so episodes of concurrent requests are generated in the same batches."""

    def __init__(self, cfg: ServeConfig) -> None:
        from promptr1.evaluation.policies import ModelPolicy, rollout_config

        try:
            # batch_wait_s: how long a round waits for the next requests of callers it just answered (they join
            # it rather than the round after); 0.1 s is ~1% of a CPU request and covers a client's round trip
            self.policy = ModelPolicy.load(cfg.agent, rollout=rollout_config(cfg, batch_wait_s=0.1),
                                           device="cpu" if cfg.cpu else None, seed=cfg.seed, dtype=cfg.model_dtype)
        except OSError as exc:  # a model folder that is not there or not a model
            raise FileNotFoundError(str(exc)) from exc
        self.timings: dict[str, float] = {}
        self.listeners: dict[int, Listener] = {}
        self.feed: Any = None
        self.loop_task: asyncio.Task | None = None

    async def start(self) -> None:
        from promptr1.agents.rollout import EpisodeFeed, arun_episodes

        self.feed = EpisodeFeed()
        p = self.policy
        self.loop_task = asyncio.ensure_future(arun_episodes(
            p.model, p.tokenizer, [], [], [], p.rollout, framer=p.framer, generator=p.generator,
            timings=self.timings, feed=self.feed, listener=self._hear, offload=True, share_system_prefix=True))
        self.loop_task.add_done_callback(self._stopped)

    @staticmethod
    def _stopped(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the agent's generation loop stopped", exc_info=task.exception())

    def _hear(self, event: str, ep: Any, text: str) -> None:
        listener = self.listeners.get(id(ep.task))
        if listener is not None:
            listener(event, ep, text)

    async def play(self, env: Any, task: Any, listener: Listener | None) -> tuple[Any, int, int]:
        """The finished episode, the tokens the agent read and those it wrote."""
        if listener is not None:
            self.listeners[id(task)] = listener
        try:
            fut = self.feed.put(env, task)
            try:
                done, _ = await asyncio.wait({fut, self.loop_task}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # deadline, or the client went away: the engine drops the episode
                fut.cancel()
                raise
            if fut not in done:
                fut.cancel()
                raise ApiError(503, "the agent's generation loop stopped; the server log says why.",
                               type_="server_error", code="agent_stopped")
            ep = fut.result()
        finally:
            self.listeners.pop(id(task), None)
        return ep, len(ep.ids) - ep.gen_tokens, ep.gen_tokens

    def stats(self) -> dict[str, float]:
        t = self.timings
        batches = t.get("generate_batches", 0.0)
        return {"generate_batches": int(batches), "generate_episodes": int(t.get("generate_episodes", 0.0)),
                "mean_batch_episodes": round(t.get("generate_episodes", 0.0) / max(batches, 1), 3),
                "generate_s": round(t.get("generate_s", 0.0), 3), "prefill_s": round(t.get("prefill_s", 0.0), 3),
                "prefill_tokens": int(t.get("prefill_tokens", 0.0)), "env_wait_s": round(t.get("env_s", 0.0), 3)}

    async def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
        if self.loop_task is not None:
            try:
                await self.loop_task
            except Exception:  # noqa: BLE001 - logged when it happened (_stopped)
                log.debug("the generation loop had stopped with an error")


def close_turn(text: str, stop_strings: Sequence[str]) -> str:
    """An OpenAI-compatible server leaves the stop string out of its reply: put back the closing tag the turn was
    about to write (the one whose opening tag comes last and is still open).

    >>> close_turn("<think>a</think><answer>Paris", ("</interaction_prompt>", "</answer>"))
    '<think>a</think><answer>Paris</answer>'
    >>> close_turn("no tags", ("</answer>",))
    'no tags'
    """
    best, where = "", -1
    for stop in stop_strings:
        if stop.startswith("</"):
            i = text.rfind("<" + stop[2:])
            if i > where and stop not in text[i:]:
                best, where = stop, i
    return text + best


class _RemotePolicy:
    """One request's agent turns from an OpenAI-compatible server (``aact``: the text-level policy protocol)."""

    def __init__(self, client: Any, model: str, rollout: Any) -> None:
        self.client, self.model, self.rollout = client, model, rollout
        self.prompt_tokens = self.completion_tokens = 0

    async def aact(self, chats: list[list[dict[str, str]]]) -> list[str]:
        return list(await asyncio.gather(*(self._one(chat) for chat in chats)))

    async def _one(self, chat: list[dict[str, str]]) -> str:
        import openai

        stops = list(self.rollout.stop_strings)[:4]
        try:
            r = await self.client.chat.completions.create(
                model=self.model, messages=chat, max_tokens=self.rollout.max_new_tokens,
                temperature=self.rollout.temperature, top_p=self.rollout.top_p, **({"stop": stops} if stops else {}))
        except openai.OpenAIError as exc:
            raise ApiError(502, f"the agent server failed: {type(exc).__name__}: {exc}", type_="server_error",
                           code="agent_error") from None
        if not r.choices:
            raise ApiError(502, "the agent server sent no choice.", type_="server_error", code="agent_error")
        choice = r.choices[0]
        text = choice.message.content or ""
        if r.usage is not None:
            self.prompt_tokens += int(r.usage.prompt_tokens or 0)
            self.completion_tokens += int(r.usage.completion_tokens or 0)
        return close_turn(text, stops) if choice.finish_reason == "stop" else text


class RemoteAgent:
    """The agent behind an OpenAI-compatible server (``--agent openai:MODEL``): each request's episode is played by
    :class:`~promptr1.evaluation.policies.TextPolicyPlayer`; the agent server batches concurrent requests."""

    def __init__(self, cfg: ServeConfig) -> None:
        import openai
        from promptr1.agents.rollout import rollout_config

        url = (cfg.agent_base_url or os.environ.get(AGENT_URL_ENV, "")).strip()
        if not url:
            raise ConfigError(f"--agent {cfg.agent} needs the agent server's URL: --agent-base-url "
                              f"http://HOST:PORT/v1 (or ${AGENT_URL_ENV}).")
        self.model = cfg.agent.partition(":")[2].strip()
        self.rollout = rollout_config(cfg)
        self.client = openai.AsyncOpenAI(base_url=url, api_key=os.environ.get(AGENT_KEY_ENV) or "none",
                                         timeout=cfg.request_timeout_s, max_retries=2)

    async def start(self) -> None:
        return None

    async def play(self, env: Any, task: Any, listener: Listener | None) -> tuple[Any, int, int]:
        from promptr1.evaluation.policies import TextPolicyPlayer

        policy = _RemotePolicy(self.client, self.model, self.rollout)
        ep = (await TextPolicyPlayer(policy, batch_size=1).aplay([env], [task], listener=listener))[0]
        return ep, policy.prompt_tokens, policy.completion_tokens

    def stats(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        await self.client.close()


# ----------------------------------------------------------------------------- the server


def load_api_keys(cfg: ServeConfig) -> list[str]:
    """The accepted keys: ``$api_keys_env`` (comma-separated), then ``api_key_file`` (one a line)."""
    keys = [k.strip() for k in os.environ.get(cfg.api_keys_env, "").split(",")] if cfg.api_keys_env else []
    if cfg.api_key_file:
        path = pathlib.Path(cfg.api_key_file)
        if not path.is_file():
            raise FileNotFoundError(f"--api-key-file {cfg.api_key_file!r}: no such file (one key a line).")
        keys += [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [k for k in keys if k]


def key_matches(given: str, keys: Sequence[str]) -> bool:
    """True when ``given`` is one of ``keys``, compared in constant time (every key is compared).

    >>> key_matches("b", ["a", "b"]), key_matches("c", ["a", "b"])
    (True, False)
    """
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8"))
    return ok


class Server:
    """The HTTP side: checks each request, plays its episode through the agent, answers in OpenAI's schema."""

    def __init__(self, cfg: ServeConfig, agent: Any, backend: Any, budget: Any, keys: Sequence[str]) -> None:
        self.cfg, self.agent, self.backend, self.budget, self.keys = cfg, agent, backend, budget, list(keys)
        self.env_models = list(cfg.env_models_map()[0])
        from promptr1.envs.collab_env import PromptCollabEnv

        self.env_kwargs = PromptCollabEnv.settings_kwargs(cfg)
        self.in_flight = 0
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.statuses: Counter[int] = Counter()
        self.max_in_flight_seen = 0
        self.env_llm_calls = 0
        self.env_llm_cost = 0.0
        self.started = time.time()

    # --- the app
    def app(self) -> Any:
        from aiohttp import web

        app = web.Application(client_max_size=self.cfg.max_body_bytes, middlewares=[self._errors, self._auth])
        app.router.add_get("/", self.page)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    @property
    def _errors(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def errors(request: Any, handler: Any) -> Any:
            try:
                response = await handler(request)
            except ApiError as exc:
                response = self._error_response(exc)
            except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 (body over --max-body-bytes) ...
                message = {413: f"the request body is over the server's limit of {self.cfg.max_body_bytes} bytes "
                                f"(--max-body-bytes).",
                           404: f"no such route: {request.method} {request.path} (the API is under /v1).",
                           405: f"{request.method} is not allowed on {request.path}."}.get(exc.status, exc.reason)
                response = self._error_response(ApiError(exc.status, message, code=exc.reason.lower().replace(" ", "_"),
                                                         type_="invalid_request_error"))
            except Exception:  # never a traceback in a response; it goes to the server log
                log.exception("internal error on %s %s", request.method, request.path)
                response = self._error_response(ApiError(500, "internal server error (the server log has the "
                                                              "details).", type_="server_error", code="internal_error"))
            if not getattr(response, "prepared", False):  # a stream counts its own outcome
                self.statuses[response.status] += 1
            return response

        return errors

    @property
    def _auth(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def auth(request: Any, handler: Any) -> Any:
            if self.keys and request.path not in ("/", "/health"):
                header = request.headers.get("Authorization", "")
                scheme, _, given = header.partition(" ")
                if scheme.lower() != "bearer" or not key_matches(given.strip(), self.keys):
                    raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' with a key the "
                                        "server accepts.", code="invalid_api_key",
                                   headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)

        return auth

    @staticmethod
    def _error_response(exc: ApiError) -> Any:
        from aiohttp import web

        return web.json_response(exc.body(), status=exc.status, headers=exc.headers)

    # --- small routes
    def model_ids(self) -> list[str]:
        return [self.cfg.served_model_name, *self.env_models]

    async def page(self, request: Any) -> Any:
        from importlib.resources import files

        from aiohttp import web

        html = (files("promptr1.commands") / "static" / "index.html").read_text(encoding="utf-8")
        html = html.replace("__PROMPTR1_MODELS__", json.dumps(self.model_ids()).replace("<", "\\u003c"))
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def health(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"status": "draining" if self.draining else "ok", "in_flight": self.in_flight},
                                 status=503 if self.draining else 200)

    async def models(self, request: Any) -> Any:
        from aiohttp import web

        created = int(self.started)
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "promptr1"} for m in self.model_ids()]})

    async def metrics(self, request: Any) -> Any:
        from aiohttp import web

        body = {"in_flight": self.in_flight, "max_in_flight_seen": self.max_in_flight_seen,
                "draining": self.draining, "responses_by_status": {str(k): v for k, v in sorted(self.statuses.items())},
                "env_llm_calls": self.env_llm_calls, "env_llm_cost_usd": round(self.env_llm_cost, 6),
                "budget": {"calls": self.budget.calls, "cost_usd": round(float(self.budget.cost), 6),
                           "max_calls": self.cfg.max_calls, "max_cost": self.cfg.max_cost},
                "uptime_s": round(time.time() - self.started, 1), **self.agent.stats()}
        return web.json_response(body)

    # --- chat completions
    def _env_model(self, requested: str | None) -> tuple[str, str | None]:
        """``(model id answered, default env LLM of the episode or None)`` for a request's ``model``."""
        if requested in (None, self.cfg.served_model_name):
            return self.cfg.served_model_name, None
        if requested in self.env_models:
            return requested, requested
        raise ApiError(404, f"model {requested!r} is not served here; GET /v1/models lists "
                            f"{', '.join(self.model_ids())}.", code="model_not_found", param="model")

    def _request_backend(self, max_cost: float | None) -> tuple[Any, Any]:
        """The env LLM for one episode: the shared one behind a budget of its own (the env closes what it is given,
        so it gets a wrapper that leaves the shared backend open)."""
        from promptr1.llm_backends.budget import Budget, BudgetedBackend

        budget = Budget(max_cost=max_cost)
        if isinstance(self.backend, dict):
            return {name: BudgetedBackend(b, budget, owns_inner=False) for name, b in self.backend.items()}, budget
        return BudgetedBackend(self.backend, budget, owns_inner=False), budget

    async def chat(self, request: Any) -> Any:
        if self.draining:
            raise ApiError(503, "the server is shutting down; retry on another instance.", type_="server_error",
                           code="shutting_down", headers={"Connection": "close", "Retry-After": "1"})
        req = parse_chat_request(await request.read())
        model_id, env_default = self._env_model(req.model)
        if self.in_flight >= self.cfg.max_in_flight:
            raise ApiError(429, f"too many requests in flight (--max-in-flight {self.cfg.max_in_flight}); retry "
                                f"after a second.", type_="rate_limit_error", code="too_many_in_flight",
                           headers={"Retry-After": "1"})
        if self.budget.stop_reason:
            raise env_error_status(f"budget: {self.budget.stop_reason}", False)
        caps = [c for c in (self.cfg.max_request_cost, req.max_cost) if c is not None]
        self.in_flight += 1
        self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
        self.idle.clear()
        rid = uuid.uuid4().hex[:24]
        t0 = time.perf_counter()
        try:
            if req.stream:
                return await self._stream(request, req, rid, model_id, env_default, min(caps) if caps else None)
            result = await self._play(req, rid, env_default, min(caps) if caps else None, None)
            from aiohttp import web

            return web.json_response(self._completion(rid, model_id, req, *result))
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()
            log.info("request %s done in %.2fs", rid, time.perf_counter() - t0)

    async def _play(self, req: ChatRequest, rid: str, env_default: str | None, max_cost: float | None,
                    listener: Listener | None) -> tuple[Any, int, int]:
        from promptr1.envs.collab_env import PromptCollabEnv
        from promptr1.envs.tasks import Task

        task = Task(question=req.question, answers=("",), id=f"serve-{rid}")
        backend, budget = self._request_backend(max_cost)
        kwargs = dict(self.env_kwargs)
        if env_default is not None:
            kwargs["default_model"] = env_default
        env = PromptCollabEnv(task=task, env_llm=backend, **kwargs)
        try:
            ep, read, wrote = await asyncio.wait_for(self.agent.play(env, task, listener), self.cfg.request_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(504, f"no answer within the request deadline of {self.cfg.request_timeout_s:g} s "
                                f"(--request-timeout-s).", type_="server_error", code="deadline_exceeded") from None
        finally:
            env.close()
        stats = ep.episode_stats or {}
        self.env_llm_calls += int(stats.get("env_llm_calls", 0))
        self.env_llm_cost += float(stats.get("env_llm_cost_usd", 0.0))
        if ep.env_error:
            raise env_error_status(ep.env_error, bool(budget.stop_reason))
        return ep, read, wrote

    @staticmethod
    def _transcript(ep: Any) -> list[dict[str, str]]:
        out, first = [], True
        for m in ep.messages:
            if m["role"] == "system":
                continue
            role = "agent" if m["role"] == "assistant" else ("question" if first else "env")
            first = first and m["role"] != "user"
            out.append({"role": role, "content": m["content"]})
        return out

    def _summary(self, ep: Any, req: ChatRequest, read: int, wrote: int) -> tuple[dict, dict, str, str]:
        stats = ep.episode_stats or {}
        answer = (ep.components or {}).get("answer_text") or ""
        env_tokens = int(stats.get("env_llm_tokens", 0))
        usage = {"prompt_tokens": read, "completion_tokens": wrote, "total_tokens": read + wrote + env_tokens,
                 "env_llm_tokens": env_tokens}
        extra = {"answered": bool(answer), "turns": ep.turns, "env_llm_calls": int(stats.get("env_llm_calls", 0)),
                 "env_llm_cost_usd": round(float(stats.get("env_llm_cost_usd", 0.0)), 8),
                 "calls_by_model": stats.get("calls_by_model")}
        if req.transcript:
            extra["transcript"] = self._transcript(ep)
        finish = "stop" if answer else "length"
        return usage, extra, answer, finish

    def _completion(self, rid: str, model_id: str, req: ChatRequest, ep: Any, read: int, wrote: int) -> dict:
        usage, extra, answer, finish = self._summary(ep, req, read, wrote)
        return {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()), "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": finish}],
                "usage": usage, "promptr1": extra}

    async def _stream(self, request: Any, req: ChatRequest, rid: str, model_id: str, env_default: str | None,
                      max_cost: float | None) -> Any:
        from aiohttp import web

        queue: asyncio.Queue = asyncio.Queue()
        turns = {"n": 0}

        def hear(event: str, ep: Any, text: str) -> None:
            if event == "turn":
                turns["n"] += 1
                queue.put_nowait({"event": "turn", "turn": turns["n"], "role": "agent", "content": text})
            elif event == "step" and not ep.done:
                queue.put_nowait({"event": "reply", "turn": turns["n"], "role": "env",
                                  "content": ep.messages[-1]["content"]})

        base = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model_id}
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)

        async def send(payload: Any) -> None:
            await response.write(b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
                                 + b"\n\n")

        play = asyncio.ensure_future(self._play(req, rid, env_default, max_cost, hear))
        try:
            await send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]})
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, play}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await send({**base, "choices": [], "promptr1": getter.result()})
                    continue
                getter.cancel()
                while not queue.empty():
                    await send({**base, "choices": [], "promptr1": queue.get_nowait()})
                break
            try:
                ep, read, wrote = play.result()
            except ApiError as exc:
                await send(exc.body() | {"status": exc.status})
                self.statuses[exc.status] += 1
            else:
                usage, extra, answer, finish = self._summary(ep, req, read, wrote)
                await send({**base, "choices": [{"index": 0, "delta": {"content": answer}, "finish_reason": None}]})
                await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                            "usage": usage, "promptr1": {"event": "done", **extra}})
                self.statuses[200] += 1
            await send(b"[DONE]")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            play.cancel()  # the client went away: its episode leaves the engine at its next turn
            raise
        except Exception:  # headers are sent: the stream ends with an error event, never a traceback
            log.exception("request %s failed while streaming", rid)
            play.cancel()
            try:
                await send(ApiError(500, "internal server error (the server log has the details).",
                                    type_="server_error", code="internal_error").body())
                await response.write_eof()
            except Exception:  # noqa: BLE001 - the connection is gone
                log.debug("request %s: the client is gone", rid)
        return response


# ----------------------------------------------------------------------------- the command


def _build_agent(cfg: ServeConfig) -> Any:
    return RemoteAgent(cfg) if cfg.agent.startswith("openai:") else LocalAgent(cfg)


async def _run(cfg: ServeConfig) -> int:
    from aiohttp import web
    from promptr1.llm_backends import from_settings

    keys = load_api_keys(cfg)
    agent = _build_agent(cfg)
    backend, budget = from_settings(cfg)
    server = Server(cfg, agent, backend, budget, keys)
    await agent.start()
    runner = web.AppRunner(server.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # the one chosen for --port 0
    if not keys and cfg.host not in _LOOPBACK:
        print(f"promptr1 serve: WARNING: no API key is set (${cfg.api_keys_env} or --api-key-file) and the server "
              f"listens on {cfg.host}: anyone who reaches it can spend the env-LLM budget.", file=sys.stderr)
    print(f"promptr1 serve: listening on http://{cfg.host}:{port} (agent {cfg.agent}, env LLM "
          f"{', '.join(server.env_models) or cfg.env_llm}; {'API keys required' if keys else 'no API key asked'})",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.draining = True
    print(f"promptr1 serve: stopping; waiting for {server.in_flight} request(s) in flight", file=sys.stderr,
          flush=True)
    await site.stop()
    try:
        await asyncio.wait_for(server.idle.wait(), cfg.request_timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        print(f"promptr1 serve: {server.in_flight} request(s) still in flight after {cfg.request_timeout_s:g} s; "
              "closing them.", file=sys.stderr)
    await runner.cleanup()
    await agent.close()
    close = getattr(backend, "close", None)
    if callable(close):
        close()
    print("promptr1 serve: stopped", file=sys.stderr, flush=True)
    return 0


def _serve(parsed: ParsedSettings) -> int:
    cfg: ServeConfig = parsed.settings
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(_run(cfg))


def serve_main(argv: Sequence[str]) -> int:
    """``promptr1 serve``: serves until SIGTERM (or Ctrl-C), then drains; 0 on a clean stop, 2 for a usage
    error."""
    return run_command(ServeConfig, argv, "serve", _serve,
                       about="Serve the agent in front of the env LLM as an OpenAI-compatible endpoint: POST "
                             "/v1/chat/completions (streaming too), GET /v1/models, /health, /metrics, and a page to "
                             "try it at /. Concurrent requests' episodes are generated together.",
                       epilog="API keys come from $PROMPTR1_API_KEYS (comma-separated) or --api-key-file; the agent "
                              "server's key for --agent openai:MODEL from $PROMPTR1_AGENT_API_KEY. SIGTERM stops "
                              "taking requests, finishes those in flight (up to --request-timeout-s), then exits 0. "
                              "docs/serving.md has examples, the response fields and how to scale out.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve_main(sys.argv[1:]))
