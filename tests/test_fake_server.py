"""The loopback OpenAI-compatible fake server: HTTP behaviour, faults, latency and its measurements."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest

from promptr1.testing.fake_server import FakeOpenAIServer, constant, lognormal, uniform

CHAT = "/v1/chat/completions"


def _body(content: str = "hello fake world", **extra) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}], **extra}).encode()


def _post(srv: FakeOpenAIServer, body: bytes, *, timeout: float = 5.0, conn: http.client.HTTPConnection | None = None,
          headers: dict | None = None):
    c = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    c.request("POST", CHAT, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    return r.status, dict(r.getheaders()), r.read()


def test_chat_echo_usage_and_models_route():
    with FakeOpenAIServer(model="fake-x") as srv:
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        status, _, raw = _post(srv, _body("one two three", max_tokens=50))
        data = json.loads(raw)
        assert status == 200
        assert data["choices"][0]["message"] == {"role": "assistant", "content": "one two three"}
        assert data["choices"][0]["finish_reason"] == "stop"
        assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        c.request("GET", "/v1/models")
        models = json.loads(c.getresponse().read())
        assert [m["id"] for m in models["data"]] == ["fake-x"]
        rec = srv.chat_records()[0]
        assert rec.body["max_tokens"] == 50 and rec.status == 200 and rec.fault is None


def test_max_tokens_truncates_and_reply_options():
    with FakeOpenAIServer() as srv:
        data = json.loads(_post(srv, _body("a b c d e", max_tokens=2))[2])
        assert data["choices"][0]["message"]["content"] == "a b"
        assert data["choices"][0]["finish_reason"] == "length"
    with FakeOpenAIServer(reply="constant reply") as srv:
        assert json.loads(_post(srv, _body("x"))[2])["choices"][0]["message"]["content"] == "constant reply"
    with FakeOpenAIServer(reply=lambda msgs, body: msgs[-1]["content"].upper() + "!") as srv:
        assert json.loads(_post(srv, _body("hey"))[2])["choices"][0]["message"]["content"] == "HEY!"


def test_keep_alive_serves_many_requests_on_one_connection():
    with FakeOpenAIServer() as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        for i in range(20):
            status, _, raw = _post(srv, _body(f"n{i}"), conn=conn)
            assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == f"n{i}"
        stats = srv.stats()
        assert stats["requests"] == 20
        assert (stats["connections_opened"], stats["connections_open"]) == (1, 1)
        conn.close()
        _post(srv, _body("on a second connection"))
        assert srv.stats()["connections_opened"] == 2


def test_a_delayed_reply_is_cut_short_when_the_client_leaves():
    with FakeOpenAIServer(latency=5.0) as srv:
        with pytest.raises((socket.timeout, TimeoutError)):
            _post(srv, _body(), timeout=0.2)
        deadline = time.monotonic() + 60  # ends as soon as the server notices; the bound is only for a hang
        while srv.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
        rec = srv.chat_records()[0]
        assert srv.stats()["in_flight"] == 0 and rec.client_disconnected and rec.status is None
        assert rec.latency_s == 5.0


@pytest.mark.parametrize("fault,status", [("429", 429), ("500", 500), ("503", 503), ("400", 400), ("404", 404)])
def test_status_faults(fault, status):
    with FakeOpenAIServer(schedule=[fault, None], retry_after_s=7) as srv:
        st, headers, raw = _post(srv, _body())
        assert st == status
        assert json.loads(raw)["error"]["code"] == fault
        if status == 429:
            assert headers["Retry-After"] == "7"
        else:
            assert "Retry-After" not in headers
        assert _post(srv, _body())[0] == 200  # past the schedule: normal again
        assert srv.stats()["faults"] == {fault: 1}


def test_body_faults_empty_emptytext_badjson():
    with FakeOpenAIServer(schedule=["empty", "emptytext", "badjson"]) as srv:
        assert json.loads(_post(srv, _body())[2])["choices"] == []
        assert json.loads(_post(srv, _body())[2])["choices"][0]["message"]["content"] == ""
        st, _, raw = _post(srv, _body())
        assert st == 200
        with pytest.raises(ValueError):
            json.loads(raw)


def test_drop_closes_without_response():
    with FakeOpenAIServer(schedule=["drop"]) as srv:
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            _post(srv, _body())
        rec = srv.chat_records()[0]
        assert rec.fault == "drop" and rec.status is None
        assert _post(srv, _body())[0] == 200


def test_hang_holds_until_client_gives_up_and_frees_in_flight():
    with FakeOpenAIServer(schedule=["hang"]) as srv:
        t0 = time.monotonic()
        with pytest.raises((socket.timeout, TimeoutError)):
            _post(srv, _body(), timeout=0.4)
        assert time.monotonic() - t0 > 0.35  # the server held the request until the client's timeout
        # the client closed its socket: the server notices and stops counting the request
        deadline = time.monotonic() + 60  # ends as soon as the server notices; the bound is only for a hang
        while srv.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.stats()["in_flight"] == 0
        assert srv.chat_records()[0].client_disconnected


def test_stop_is_quick_with_hung_requests():
    srv = FakeOpenAIServer(fault_rate=1.0, faults=("hang",)).start()
    threads = [threading.Thread(target=lambda: pytest.raises(Exception, _post, srv, _body(), timeout=30))
               for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while srv.stats()["in_flight"] < 3 and time.monotonic() < deadline:  # all three hang at the server
        time.sleep(0.01)
    srv.stop()  # does not wait for the hung requests: their clients see the connection end, not their 30 s timeout
    for t in threads:
        t.join(timeout=25)
        assert not t.is_alive()


def test_api_key_checked_when_set():
    with FakeOpenAIServer(api_key="right") as srv:
        assert _post(srv, _body(), headers={"Authorization": "Bearer wrong"})[0] == 401
        assert _post(srv, _body(), headers={"Authorization": "Bearer right"})[0] == 200
        assert [r.authorized for r in srv.chat_records()] == [False, True]


def test_bad_requests_and_routes():
    with FakeOpenAIServer() as srv:
        assert _post(srv, b"not json")[0] == 400
        assert _post(srv, json.dumps({"model": "m"}).encode())[0] == 400
        assert _post(srv, _body(stream=True))[0] == 400
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        c.request("GET", "/v1/nothing")
        assert c.getresponse().status == 404


def test_constructor_validation():
    with pytest.raises(ValueError, match="unknown fault"):
        FakeOpenAIServer(faults=("429", "teapot"))
    with pytest.raises(ValueError, match="fault_rate"):
        FakeOpenAIServer(fault_rate=1.5)
    with pytest.raises(ValueError, match="schedule"):
        FakeOpenAIServer(schedule=["500", "bogus"])
    with pytest.raises(RuntimeError, match="not running"):
        _ = FakeOpenAIServer().base_url


def test_constant_latency_is_applied():
    with FakeOpenAIServer(latency=0.2) as srv:
        t0 = time.monotonic()
        assert _post(srv, _body())[0] == 200
        assert time.monotonic() - t0 >= 0.2


def test_latency_draws_are_seeded_per_request():
    def latencies(seed):
        with FakeOpenAIServer(latency=lognormal(0.001, 1.0), seed=seed) as srv:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            for _ in range(8):
                _post(srv, _body(), conn=conn)
            return [r.latency_s for r in srv.chat_records()]

    a, b, c = latencies(1), latencies(1), latencies(2)
    assert a == b and a != c
    assert len(set(a)) == 8
    assert 0.1 <= uniform(0.1, 0.3)(__import__("random").Random(0)) <= 0.3
    assert constant(0.5)(None) == 0.5


def _fault_sequence(srv: FakeOpenAIServer, n: int, content=lambda i: "same prompt") -> list:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    for i in range(n):
        try:
            _post(srv, _body(content(i)), conn=conn)
        except (http.client.HTTPException, ConnectionError):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    return [r.fault for r in srv.chat_records()]


def test_fault_rate_is_close_to_requested_and_reproducible():
    faults = ("429", "500", "503", "drop", "empty", "badjson")
    with FakeOpenAIServer(fault_rate=0.2, faults=faults, seed=0, retry_after_s=None) as srv:
        seq = _fault_sequence(srv, 500)
    rate = sum(f is not None for f in seq) / len(seq)
    assert 0.15 <= rate <= 0.25, rate
    assert {f for f in seq if f} == set(faults)  # every kind shows up over 500 requests
    with FakeOpenAIServer(fault_rate=0.2, faults=faults, seed=0, retry_after_s=None) as srv:
        assert _fault_sequence(srv, 60) == seq[:60]
    with FakeOpenAIServer(fault_rate=0.2, faults=faults, seed=1, retry_after_s=None) as srv:
        assert _fault_sequence(srv, 60) != seq[:60]


def test_per_prompt_faults_repeat_for_the_same_chat():
    with FakeOpenAIServer(fault_rate=0.5, faults=("500",), fault_mode="per_prompt", seed=3) as srv:
        seq = _fault_sequence(srv, 40, content=lambda i: f"prompt {i % 10}")
    for i in range(10, 40):
        assert seq[i] == seq[i % 10]
    assert 0 < sum(f is not None for f in seq[:10]) < 10


def test_schedule_callable():
    with FakeOpenAIServer(schedule=lambda i, body: "500" if i % 2 else None) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        assert [_post(srv, _body(), conn=conn)[0] for _ in range(4)] == [200, 500, 200, 500]


async def _raw_request(port: int, body: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


def test_measures_concurrency_and_scales_to_hundreds_of_connections():
    n = 200
    with FakeOpenAIServer(latency=0.3) as srv:

        async def main():
            return await asyncio.gather(*(_raw_request(srv.port, _body(f"q{i}")) for i in range(n)))

        statuses = asyncio.run(main())
        stats = srv.stats()
    assert statuses == [200] * n
    assert stats["requests"] == n and stats["in_flight"] == 0
    # all requests overlapped at the server (it does not serialize), and it says so
    assert stats["max_in_flight"] >= 0.9 * n  # served concurrently, not one after another (that would take 60 s)


def test_lengthcut_is_an_empty_reply_that_bills_max_tokens():
    with FakeOpenAIServer(schedule=["lengthcut", "lengthcut"]) as srv:
        data = json.loads(_post(srv, _body("a b c", max_tokens=40))[2])
        assert data["choices"][0]["message"]["content"] == "" and data["choices"][0]["finish_reason"] == "length"
        assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 40, "total_tokens": 43}
        data = json.loads(_post(srv, _body("a b c"))[2])  # no max_tokens: the server's own limit
        assert data["usage"]["completion_tokens"] == 612


@pytest.mark.parametrize("fault", ["oversized", "oversized_chunked", "oversized_gzip"])
def test_oversized_replies_are_valid_replies_of_the_asked_size(fault):
    import gzip

    with FakeOpenAIServer(schedule=[fault, None], oversize_bytes=300_000) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        status, headers, raw = _post(srv, _body("hi"), conn=conn)
        assert status == 200
        if fault == "oversized_gzip":
            assert headers["Content-Encoding"] == "gzip" and int(headers["Content-Length"]) == len(raw) < 5_000
            raw = gzip.decompress(raw)
        elif fault == "oversized_chunked":
            assert headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers
        else:
            assert int(headers["Content-Length"]) == len(raw)
        assert len(raw) == 300_000
        assert json.loads(raw)["choices"][0]["message"]["content"].startswith("hi xxx")
        # the connection is still usable (the framing was right)
        assert json.loads(_post(srv, _body("next"), conn=conn)[2])["choices"][0]["message"]["content"] == "next"
        conn.close()
