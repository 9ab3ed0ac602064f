"""Episodes per second through the vector env against the loopback fake OpenAI server.

Each episode is 2 prompt turns and an answer (2 env-LLM calls). The server answers after a
latency drawn from a long-tailed lognormal (median 200 ms by default). For each concurrency C we
run C sub-envs with the backend limited to C requests in flight, and print:

* ideal       C / (mean latency x calls per episode)
* ours        the async API (``submit``/``collect``): each episode moves on when its own reply lands;
  steady state: every sub-env always busy, episodes ending inside the measured window counted
* barrier     the batch ``step()`` of the same vector env: every turn waits for the slowest call
  (what the reference's rollout does)

Target (issue 3): ours >= 80% of ideal at C = 32, and faster than the barrier under a long tail.

    python benchmarks/bench_vector_env.py [--median-ms 200 --sigma 0.6 --duration 8]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import time

from promptr1.envs.tasks import Task
from promptr1.envs.vector import PromptCollabVectorEnv
from promptr1.testing.fake_server import FakeOpenAIServer, lognormal
from promptr1.llm_backends.openai_backend import OpenAIBackend

TURNS = [
    "<think>t</think><interaction_prompt>first question</interaction_prompt>",
    "<think>t</think><interaction_prompt>second question</interaction_prompt>",
    "<think>t</think><answer>gold</answer>",
]
CALLS_PER_EPISODE = 2


def _venv(base_url: str, c: int) -> PromptCollabVectorEnv:
    backend = OpenAIBackend("fake-model", base_url=base_url, max_concurrency=c, timeout_s=30, deadline_s=60)
    return PromptCollabVectorEnv(num_envs=c, env_llm=backend, task=[Task("q?", ("gold",))])


def run_async(base_url: str, c: int, duration_s: float, warmup_s: float) -> float:
    """Steady-state episodes/s: every sub-env always busy; count episodes that end inside the window."""
    venv = _venv(base_url, c)
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
        counted = 0
        while True:
            now = time.perf_counter()
            if now >= window_end:
                break
            for res in venv.collect(timeout=window_end - now):
                if res.done:
                    if window_start <= time.perf_counter() < window_end:
                        counted += 1
                    start(res.index)
                else:
                    turn[res.index] += 1
                    venv.submit(res.index, TURNS[turn[res.index]])
        venv.collect(timeout=60, min_ready=len(venv.in_flight))  # let in-flight calls land before closing
        return counted / duration_s
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
    """The fake server in its own process, so its CPU time is not charged to the env's (like a real server)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(median, sigma, q), daemon=True)
    proc.start()
    try:
        yield f"http://127.0.0.1:{q.get(timeout=60)}/v1"
    finally:
        proc.terminate()
        proc.join(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--median-ms", type=float, default=200.0)
    ap.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma (0 = constant latency)")
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    args = ap.parse_args()
    median = args.median_ms / 1000
    mean = median * math.exp(args.sigma ** 2 / 2)
    print(f"fake server latency: lognormal median {args.median_ms:.0f} ms, sigma {args.sigma} "
          f"(mean {mean * 1000:.0f} ms); {CALLS_PER_EPISODE} env-LLM calls per episode\n")
    print(f"{'C':>5}{'ideal ep/s':>12}{'ours ep/s':>11}{'% ideal':>9}{'barrier ep/s':>14}{'ours/barrier':>14}")
    with server_process(median, args.sigma) as base_url:
        for c in args.concurrency:
            ideal = c / (mean * CALLS_PER_EPISODE)
            ours = run_async(base_url, c, args.duration, args.warmup)
            barrier = run_barrier(base_url, c, args.duration, args.warmup)
            print(f"{c:>5}{ideal:>12.1f}{ours:>11.1f}{100 * ours / ideal:>8.0f}%{barrier:>14.1f}{ours / barrier:>13.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
