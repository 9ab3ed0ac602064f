"""Episodes per second through the vector env against the loopback fake OpenAI server.

Each episode is 2 prompt turns and an answer (2 env-LLM calls). The server answers after a
latency drawn from a long-tailed lognormal (median 200 ms by default). For each concurrency C we
run C sub-envs with the backend limited to C requests in flight, and print:

* ideal       C / (mean latency x calls per episode): what a client that costs nothing would get
* ours        the async API (``submit``/``collect``): each episode moves on when its own reply lands;
  steady state: every sub-env always busy, episodes ending inside the measured window counted
* client CPU  this process's CPU time over the measured window, in % of one core, and per env-LLM
  request (everything: the env, the vector env, the backend, the SDK, the socket calls)
* server CPU  the fake server's share of one core over the same window: it runs in its own process
  (like a real server), so it is not charged to the client, but it shares the machine's cores
* --http      which HTTP transport(s) the backend uses under the SDK: ``aiohttp`` (the default: one
  aiohttp keep-alive pool) and/or ``httpx`` (the SDK's own httpx pools, ``http_transport="httpx"``);
  ``--http aiohttp httpx`` (or ``both``) measures them side by side in one run, the first in the
  ``ours`` columns, the next with its own ep/s, % of ideal and ms CPU per request
* barrier     the batch ``step()`` of the same vector env: every turn waits for the slowest call
  (what the reference's rollout does); ``--no-barrier`` skips it

Targets: ours >= 80% of ideal at C = 32 (issue 3) and at C = 128 (issue 11) on 2 cores, a measured
figure at C = 512, and faster than the barrier under a long tail.

    python benchmarks/bench_vector_env.py [--median-ms 200 --sigma 0.6 --duration 8 --concurrency 32 128 512]
        [--http aiohttp httpx] [--no-barrier]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import shlex
import sys
import time

from promptr1.envs.tasks import Task
from promptr1.envs.vector import PromptCollabVectorEnv
from promptr1.llm_backends.openai_backend import OpenAIBackend

from promptr1.testing.fake_server import FakeOpenAIServer, lognormal

TURNS = [
    "<think>t</think><interaction_prompt>first question</interaction_prompt>",
    "<think>t</think><interaction_prompt>second question</interaction_prompt>",
    "<think>t</think><answer>gold</answer>",
]
CALLS_PER_EPISODE = 2


def _venv(base_url: str, c: int, http: str = "aiohttp") -> PromptCollabVectorEnv:
    backend = OpenAIBackend("fake-model", base_url=base_url, max_concurrency=c, timeout_s=30, deadline_s=60,
                            http_transport=http)
    return PromptCollabVectorEnv(num_envs=c, env_llm=backend, task=[Task("q?", ("gold",))])


def proc_cpu_s(pid: int | None = None) -> float | None:
    """CPU seconds (user + system, all threads) used so far by process ``pid`` (default: this one)."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):  # not Linux: no server figure
        return None


def run_async(base_url: str, c: int, duration_s: float, warmup_s: float, *, http: str = "aiohttp",
              server_pid: int | None = None) -> dict[str, float | None]:
    """Steady state: every sub-env always busy; count episodes that end inside the window.

    Returns episodes/s, env-LLM requests/s, and the client's and the server's CPU over the window.
    """
    venv = _venv(base_url, c, http)
    try:
        seed = 0
        turn = {}

        def start(i: int) -> None:
            nonlocal seed
            venv.reset_one(i, seed=seed)
            seed += 1
            turn[i] = 0
            venv.submit(i, TURNS[0])

        for i in range(c):
            start(i)
        t0 = time.perf_counter()
        window_start, window_end = t0 + warmup_s, t0 + warmup_s + duration_s
        counted, calls = 0, 0
        cpu0 = srv0 = None
        while True:
            now = time.perf_counter()
            if now >= window_end:
                break
            if cpu0 is None and now >= window_start:
                cpu0, srv0, calls = proc_cpu_s(), proc_cpu_s(server_pid) if server_pid else None, 0
            for res in venv.collect(timeout=(window_start if cpu0 is None else window_end) - now):
                calls += turn[res.index] < CALLS_PER_EPISODE  # the answer turn makes no env-LLM call
                if res.done:
                    if window_start <= time.perf_counter() < window_end:
                        counted += 1
                    start(res.index)
                else:
                    turn[res.index] += 1
                    venv.submit(res.index, TURNS[turn[res.index]])
        cpu1, srv1 = proc_cpu_s(), proc_cpu_s(server_pid) if server_pid else None
        venv.collect(timeout=60, min_ready=len(venv.in_flight))  # let in-flight calls land before closing
        return {
            "episodes_s": counted / duration_s,
            "requests_s": calls / duration_s,
            "client_cpu": (cpu1 - cpu0) / duration_s if cpu0 is not None else None,
            "server_cpu": (srv1 - srv0) / duration_s if srv0 is not None and srv1 is not None else None,
            "cpu_ms_per_request": 1000 * (cpu1 - cpu0) / calls if cpu0 is not None and calls else None,
        }
    finally:
        venv.close()


def run_barrier(base_url: str, c: int, duration_s: float, warmup_s: float) -> float:
    """Per-turn barrier: all C episodes step together and every turn waits for the slowest call."""
    venv = _venv(base_url, c)
    try:
        t0 = time.perf_counter()
        window_start, window_end = t0 + warmup_s, t0 + warmup_s + duration_s
        episodes, r = 0, 0
        measure_t0 = None
        while time.perf_counter() < window_end:
            if measure_t0 is None and time.perf_counter() >= window_start:
                measure_t0, episodes = time.perf_counter(), 0
            venv.reset(seed=r * c)
            r += 1
            for t in TURNS:
                venv.step([t] * c)
            episodes += c
        elapsed = time.perf_counter() - (measure_t0 or t0)
        return episodes / elapsed
    finally:
        venv.close()


def _serve(median: float, sigma: float, port_q) -> None:
    latency = lognormal(median, sigma, cap_s=median * 20) if sigma > 0 else median
    srv = FakeOpenAIServer(latency=latency, seed=0, record_bodies=False).start()
    port_q.put(srv.port)
    while True:
        time.sleep(3600)


@contextlib.contextmanager
def server_process(median: float, sigma: float):
    """The fake server in its own process, so its CPU time is not charged to the env's (like a real server).

    Yields ``(base_url, pid)``.
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(median, sigma, q), daemon=True)
    proc.start()
    try:
        yield f"http://127.0.0.1:{q.get(timeout=60)}/v1", proc.pid
    finally:
        proc.terminate()
        proc.join(timeout=10)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--median-ms", type=float, default=200.0)
    ap.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma (0 = constant latency)")
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128, 512])
    ap.add_argument("--http", nargs="+", choices=("aiohttp", "httpx", "both"), default=["aiohttp"],
                    help="the backend's HTTP transport(s), measured side by side: aiohttp (default), httpx's "
                         "pools; 'both' = aiohttp httpx")
    ap.add_argument("--no-barrier", action="store_true", help="skip the per-turn barrier column")
    args = ap.parse_args()
    median = args.median_ms / 1000
    mean = median * math.exp(args.sigma ** 2 / 2)
    transports: list[str] = []
    for h in args.http:
        for t in (("aiohttp", "httpx") if h == "both" else (h,)):
            if t not in transports:
                transports.append(t)
    print("$ python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]))
    print(f"fake server latency: lognormal median {args.median_ms:.0f} ms, sigma {args.sigma} "
          f"(mean {mean * 1000:.0f} ms); {CALLS_PER_EPISODE} env-LLM calls per episode; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start\n")
    print(f"ours = the {transports[0]} transport" + (f"; then {', '.join(transports[1:])}" if transports[1:] else ""))
    cols = [("C", 5), ("ideal ep/s", 11), ("ours ep/s", 10), ("% ideal", 8), ("req/s", 7),
            ("client CPU", 11), ("ms CPU/req", 11), ("server CPU", 11)]
    for t in transports[1:]:
        cols += [(f"{t} ep/s", 13), ("% ideal", 8), ("ms CPU/req", 11)]
    if not args.no_barrier:
        cols += [("barrier ep/s", 13), ("ours/barrier", 13)]
    print("".join(f"{name:>{w}}" for name, w in cols))
    with server_process(median, args.sigma) as (base_url, server_pid):
        for c in args.concurrency:
            ideal = c / (mean * CALLS_PER_EPISODE)
            ours = run_async(base_url, c, args.duration, args.warmup, http=transports[0], server_pid=server_pid)
            ms = ours["cpu_ms_per_request"]
            row = [f"{c:>5}", f"{ideal:>11.1f}", f"{ours['episodes_s']:>10.1f}",
                   f"{100 * ours['episodes_s'] / ideal:>7.0f}%", f"{ours['requests_s']:>7.0f}",
                   f"{_pct(ours['client_cpu']):>11}", f"{'n/a' if ms is None else f'{ms:.2f}':>11}",
                   f"{_pct(ours['server_cpu']):>11}"]
            for t in transports[1:]:
                hx = run_async(base_url, c, args.duration, args.warmup, http=t, server_pid=server_pid)
                hms = hx["cpu_ms_per_request"]
                row += [f"{hx['episodes_s']:>13.1f}", f"{100 * hx['episodes_s'] / ideal:>7.0f}%",
                        f"{'n/a' if hms is None else f'{hms:.2f}':>11}"]
            if not args.no_barrier:
                barrier = run_barrier(base_url, c, args.duration, args.warmup)
                row += [f"{barrier:>13.1f}", f"{ours['episodes_s'] / barrier:>12.2f}x"]
            print("".join(row), flush=True)


if __name__ == "__main__":
    main()
