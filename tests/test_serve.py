"""`promptr1 serve`, started as the real command on a free local port and spoken to with the official `openai`
client (sync, async, streaming), raw HTTP for bad requests, a graceful SIGTERM drain, and the page in a headless
browser.

Three servers: the in-process `tiny` agent with the simulated expert (`sim`); a scripted agent behind a fake
OpenAI-compatible server (it relays the question to the env LLM and answers with the reply, so answers are known by
construction) with a fake env LLM that fails, hangs or answers on cue; and one with a slow env LLM for the in-flight
cap and the drain.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")

from promptr1.commands.serve import ServeConfig, close_turn, parse_chat_request

from promptr1.core.settings import ConfigError, load_config
from promptr1.testing.agents import ScriptedAgentPolicy
from promptr1.testing.fake_server import FakeOpenAIServer, constant

KEY = "sk-test-serve-key"
CHROMIUM = "/usr/bin/chromium"


class Served:
    """``promptr1 serve --port 0 ARGS`` as a subprocess; ``url`` once it listens."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        fd, self.log = tempfile.mkstemp(suffix=".log", prefix="serve-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "promptr1.commands.cli", "serve", "--port", "0", *args], stdout=subprocess.PIPE,
            stderr=fd, text=True, env={**os.environ, **(env or {})})
        os.close(fd)
        line = self.proc.stdout.readline()  # the first line says where it listens (or the process ended)
        if "listening on" not in line:
            self.proc.wait()
            raise AssertionError(f"promptr1 serve did not start: {line!r}\n{self.stderr()}")
        self.url = re.search(r"http://[0-9.]+:\d+", line)[0]

    def stderr(self) -> str:
        return pathlib.Path(self.log).read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0)

    def metrics(self, key: str | None = None) -> dict:
        return http(self.url + "/metrics", key=key)[1]


def http(url: str, body: bytes | None = None, key: str | None = None) -> tuple[int, dict, dict]:
    """``(status, JSON body, headers)`` of a GET (no body) or POST."""
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc), dict(exc.headers)


def ask(question: str, **extra) -> bytes:
    return json.dumps({"model": "prompt-r1", "messages": [{"role": "user", "content": question}], **extra}).encode()


# ----------------------------------------------------------------------------- unit: settings and requests


def test_settings_are_checked_when_made():
    cfg = load_config(ServeConfig, overrides=["--agent", "tiny", "--port", "0"])
    assert cfg.agent == "tiny" and cfg.port == 0
    assert load_config(ServeConfig).agent == "smollm2"  # empty: the shared model setting
    for bad, match in ((["--port", "70000"], "--port"), (["--max-in-flight", "0"], "--max-in-flight"),
                       (["--agent", "openai:"], "openai:MODEL"), (["--request-timeout-s", "0"], "timeout")):
        with pytest.raises(ConfigError, match=match):
            load_config(ServeConfig, overrides=bad)


def test_help_lists_the_server_options_and_refuses_model(capsys):
    from promptr1.commands.cli import main

    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: promptr1 serve [options]" in out and "--agent TEXT" in out
    for option in ("--agent ", "--host ", "--port ", "--max-in-flight ", "--max-request-cost ", "--env-models "):
        assert option in out
    assert "--model " not in out and "--output-dir" not in out
    assert main(["serve", "--model", "tiny"]) == 2
    assert "'--model' does not apply to promptr1 serve" in capsys.readouterr().err


def test_earlier_messages_reach_the_agent_inside_the_question():
    r = parse_chat_request(json.dumps({"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "Who founded Vantrel?"},
        {"role": "assistant", "content": "Mira Osk."},
        {"role": "user", "content": [{"type": "text", "text": "Where was she born?"}]}]}).encode())
    assert r.question.startswith("Where was she born?")
    assert "user: Who founded Vantrel?\nassistant: Mira Osk." in r.question and "be brief" not in r.question


def test_close_turn_puts_back_the_stop_string_a_server_cut():
    stops = ("</interaction_prompt>", "</answer>")
    assert close_turn("<think>x</think><interaction_prompt>Ask", stops).endswith("Ask</interaction_prompt>")
    assert close_turn("<think>x</think><answer>y</answer>", stops) == "<think>x</think><answer>y</answer>"


# ----------------------------------------------------------------------------- a scripted agent behind a server


def _agent_reply(messages, body):
    """The relay agent, cut at the request's stop strings as a real server does."""
    text = ScriptedAgentPolicy.relay().script(messages)
    cuts = [text.find(s) for s in body.get("stop") or [] if s in text]
    return text[:min(cuts)] if cuts else text


def _env_schedule(index, body):
    text = json.dumps(body.get("messages"))
    return "400" if "FAIL" in text else "hang" if "HANG" in text else None


@pytest.fixture(scope="module")
def scripted():
    with FakeOpenAIServer(reply=_agent_reply) as agent_srv, \
            FakeOpenAIServer(reply=lambda m, b: "The expert says: " + m[-1]["content"], schedule=_env_schedule,
                             hang_s=60) as env_srv:
        served = Served(["--agent", "openai:relay", "--agent-base-url", agent_srv.base_url, "--env-models",
                         "main=openai:fake-env", "backup=openai:fake-env-2", "--env-model-prices", "main=1:1",
                         "backup=2:2", "--max-turns", "3",
                         "--request-timeout-s", "10", "--max-body-bytes", "4096"],
                        env={"PROMPTR1_API_KEYS": f"other-key, {KEY}", "OPENAI_BASE_URL": env_srv.base_url})
        served.env_srv = env_srv
        yield served
        assert served.stop() == 0
        assert KEY not in served.stderr()  # a key is never logged


def test_the_openai_client_gets_the_agents_answer(scripted):
    client = scripted.client(KEY)
    assert [m.id for m in client.models.list().data] == ["prompt-r1", "main", "backup"]
    r = client.chat.completions.create(model="prompt-r1", extra_body={"transcript": True},
                                       messages=[{"role": "user", "content": "What is the capital of Freedonia?"}])
    assert r.choices[0].message.content == "The expert says: What is the capital of Freedonia?"
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
    extra = r.model_extra["promptr1"]
    assert extra["answered"] and extra["turns"] == 2 and extra["env_llm_calls"] == 1
    assert extra["env_llm_cost_usd"] > 0 and extra["calls_by_model"] == {"main": 1, "backup": 0}
    assert [t["role"] for t in extra["transcript"]] == ["question", "agent", "env", "agent"]
    assert extra["transcript"][1]["content"].endswith("</interaction_prompt>")  # the cut stop string, put back
    u = r.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0 and u.model_extra["env_llm_tokens"] > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens + u.model_extra["env_llm_tokens"]


def test_a_request_may_pick_the_default_env_llm_among_those_configured(scripted):
    client = scripted.client(KEY)
    r = client.chat.completions.create(model="backup", messages=[{"role": "user", "content": "Where is Miktha?"}])
    assert r.model == "backup" and r.model_extra["promptr1"]["calls_by_model"] == {"main": 0, "backup": 1}
    assert scripted.env_srv.records[-1].body["model"] == "fake-env-2"  # the call went to backup's model
    with pytest.raises(openai.NotFoundError, match="lists prompt-r1, main, backup"):
        client.chat.completions.create(model="medium", messages=[{"role": "user", "content": "Hi?"}])


def test_concurrent_async_requests_get_their_own_answers(scripted):
    async def go():
        client = openai.AsyncOpenAI(base_url=scripted.url + "/v1", api_key=KEY, max_retries=0)
        questions = [f"Question number {i}?" for i in range(6)]
        rs = await asyncio.gather(*(client.chat.completions.create(
            model="prompt-r1", messages=[{"role": "user", "content": q}]) for q in questions))
        await client.close()
        return questions, rs

    questions, rs = asyncio.run(go())
    assert [r.choices[0].message.content for r in rs] == [f"The expert says: {q}" for q in questions]


def test_streaming_sends_the_turns_as_they_happen_and_the_answer_last(scripted):
    stream = scripted.client(KEY).chat.completions.create(
        model="prompt-r1", stream=True, messages=[{"role": "user", "content": "Who wrote Zarn?"}])
    kinds, answer, last = [], "", None
    for chunk in stream:
        event = (chunk.model_extra or {}).get("promptr1")
        if event:
            kinds.append((event["event"], event.get("role")))
        for c in chunk.choices:
            answer += c.delta.content or ""
            if c.finish_reason:
                last = chunk
    assert kinds == [("turn", "agent"), ("reply", "env"), ("turn", "agent"), ("done", None)]
    assert answer == "The expert says: Who wrote Zarn?"
    assert last.choices[0].finish_reason == "stop" and last.usage.completion_tokens > 0


def test_bad_requests_get_openai_errors_never_tracebacks(scripted):
    url = scripted.url + "/v1/chat/completions"
    cases = {
        "malformed": (b'{"model": "prompt-r1", "messages": [', KEY, 400, "not valid JSON"),
        "no user": (json.dumps({"messages": [{"role": "system", "content": "x"}]}).encode(), KEY, 400,
                    "no user message"),
        "oversize": (ask("x" * 5000), KEY, 413, "over the server's limit"),
        "no key": (ask("Hi?"), None, 401, "API key"),
        "wrong key": (ask("Hi?"), KEY + "x", 401, "API key"),
        "unknown model": (json.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "Hi?"}]}).encode(),
                          KEY, 404, "GET /v1/models lists prompt-r1"),
        "two answers": (ask("Hi?", n=2), KEY, 400, "n must be 1"),
    }
    for name, (body, key, status, text) in cases.items():
        got, payload, _ = http(url, body, key)
        assert got == status, name
        assert set(payload["error"]) == {"message", "type", "code", "param"} and text in payload["error"]["message"]
        assert "Traceback" not in json.dumps(payload)
    assert http(scripted.url + "/v1/models")[0] == 401  # the API needs the key; the page and /health do not
    assert http(scripted.url + "/health")[0] == 200
    with pytest.raises(openai.AuthenticationError):
        scripted.client("wrong").chat.completions.create(model="prompt-r1", messages=[{"role": "user", "content": "Q"}])


def test_a_failing_env_llm_is_reported_never_answered(scripted):
    client = scripted.client(KEY)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="prompt-r1", messages=[{"role": "user", "content": "Please FAIL now"}])
    assert info.value.status_code == 502 and "the env LLM failed" in info.value.message
    # streaming: the headers are sent, so the failure arrives as an error event, which the client raises
    with pytest.raises(openai.APIError, match="the env LLM failed"):
        for _ in client.chat.completions.create(model="prompt-r1", stream=True,
                                                messages=[{"role": "user", "content": "FAIL while streaming"}]):
            pass


def test_deadline_and_request_cost_cap(scripted):
    status, payload, _ = http(scripted.url + "/v1/chat/completions", ask("HANG forever"), KEY)
    assert status == 504 and payload["error"]["code"] == "deadline_exceeded"
    status, payload, _ = http(scripted.url + "/v1/chat/completions", ask("Cheap?", max_cost=0), KEY)
    assert status == 402 and payload["error"]["code"] == "request_max_cost_reached"


# ----------------------------------------------------------------------------- in-flight cap and graceful drain


def test_too_many_in_flight_get_429_and_sigterm_drains_the_rest():
    with FakeOpenAIServer(reply=_agent_reply) as agent_srv, FakeOpenAIServer(latency=constant(3.0)) as env_srv:
        served = Served(["--agent", "openai:relay", "--agent-base-url", agent_srv.base_url, "--env-llm",
                         "openai:slow-env", "--max-in-flight", "2", "--max-turns", "2"],
                        env={"OPENAI_BASE_URL": env_srv.base_url})
        results = {}

        def one(i):
            results[i] = http(served.url + "/v1/chat/completions", ask(f"Slow question {i}?"))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        while served.metrics()["in_flight"] < 2:  # what the server decided, not how long it took
            time.sleep(0.05)
        status, payload, headers = http(served.url + "/v1/chat/completions", ask("One too many?"))
        assert status == 429 and headers["Retry-After"] == "1" and payload["error"]["code"] == "too_many_in_flight"
        served.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        # the one SIGTERM is all it gets: a second one (stop()) during the interpreter's exit would kill it
        assert served.proc.wait(timeout=120) == 0
        assert [results[i][0] for i in range(2)] == [200, 200]
        assert [results[i][1]["choices"][0]["message"]["content"] for i in range(2)] == [
            f"Slow question {i}?" for i in range(2)]  # the slow env LLM echoes the prompt
        assert "waiting for 2 request(s) in flight" in served.stderr()
        with pytest.raises(OSError):  # no longer listening
            urllib.request.urlopen(served.url + "/health", timeout=10)


# ----------------------------------------------------------------------------- the in-process agent


@pytest.fixture(scope="module")
def tiny():
    served = Served(["--plugins", "promptr1.testing", "--agent", "tiny", "--env-llm", "sim", "--cpu",
                     "--max-new-tokens", "8", "--max-turns", "2"])
    yield served
    assert served.stop() == 0


def test_the_in_process_agent_answers_through_the_engine(tiny):
    client = tiny.client()
    r = client.chat.completions.create(model="prompt-r1", extra_body={"transcript": True},
                                       messages=[{"role": "user", "content": "Who founded Vantrel Corp?"}])
    extra = r.model_extra["promptr1"]
    assert extra["transcript"][0]["role"] == "question" and "Who founded Vantrel Corp?" in extra["transcript"][0]["content"]
    assert 1 <= extra["turns"] <= 2 and [t["role"] for t in extra["transcript"]][1] == "agent"
    assert 1 <= r.usage.completion_tokens <= 8 * extra["turns"]  # the agent's sampled tokens
    assert r.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model="prompt-r1", stream=True,
                                            messages=[{"role": "user", "content": "Where is Miktha?"}])
    events = [c.model_extra["promptr1"]["event"] for c in stream if (c.model_extra or {}).get("promptr1")]
    assert events[0] == "turn" and events[-1] == "done"
    m = tiny.metrics()
    assert m["generate_batches"] >= 2 and m["responses_by_status"]["200"] >= 2


@pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(),
                    reason=f"no headless browser: {CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
def test_the_page_shows_the_turns_and_the_answer_in_a_real_browser(tiny, tmp_path):
    page = http_text(tiny.url + "/")
    assert "<script>" in page and '["prompt-r1"]' in page  # the models are filled in; no framework download
    dom = browse(tiny.url + "/?q=Who+founded+Vantrel+Corp%3F", tmp_path)
    assert re.search(r'<div class="turn agent"><span class="who">agent, turn 1</span>', dom)
    answer = re.search(r'<div id="answer">(.*?)</div>', dom, re.DOTALL)[1]
    assert answer.strip(), "the answer (or the no-answer note) is on the page"
    assert re.search(r"agent tokens: \d+ read, \d+ written; env LLM: \d+ call\(s\), \d+ tokens, \$\d", dom)
    assert '<div id="error"></div>' in dom


def browse(url: str, profile: pathlib.Path) -> str:
    """Open ``url`` in headless Chromium and return the page's DOM once its script says it is done (it sets
    ``data-state="done"`` on the body), driving the browser over the Chrome DevTools protocol."""
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
            if "DevTools listening on" in line:
                port = re.search(r"ws://[^:]+:(\d+)/", line)[1]
                threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its log from filling the pipe
                break
        else:
            raise AssertionError("chromium did not open its DevTools port")
        return asyncio.run(_drive(port, url))
    finally:
        proc.terminate()
        proc.wait(timeout=60)


async def _drive(port: str, url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
            target = next(t for t in await r.json() if t["type"] == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))

            async def call(method: str, **params) -> dict:
                i = next(ids)
                await ws.send_json({"id": i, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json()
                    if msg.get("id") == i:
                        return msg.get("result", {})

            async def value(expression: str):
                return (await call("Runtime.evaluate", expression=expression, returnByValue=True))["result"].get("value")

            await call("Page.navigate", url=url)
            while await value("document.body && document.body.dataset.state") != "done":
                await asyncio.sleep(0.1)  # until the page's script is done: no time limit asserted
            return await value("document.documentElement.outerHTML")


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read().decode()
