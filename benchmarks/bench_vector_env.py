"""Episodes per second through the vector env against the loopback fake OpenAI server.

Each episode is 2 prompt turns and an answer (2 env-LLM calls). The server answers after a
latency drawn from a long-tailed lognormal (median 200 ms by default). For each concurrency C we
run C sub-envs with the backend limited to C requests in flight, and print:

* ideal       C / (mean latency x calls per episode)
* ours        the async API (``submit``/``collect``): each episode moves on when its own reply lands
* barrier     the batch ``step()`` of the same vector env: every turn waits for the slowest call
  (what the reference's rollout does)

Target (issue 3): ours >= 80% of ideal at C = 32, and faster than the barrier under a long tail.

    python benchmarks/bench_vector_env.py [--median-ms 200 --sigma 0.6 --episodes-per-env 6]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import time

from promptr1.envs.tasks import Task
from promptr1.envs.vector import PromptCollabVectorEnv
from promptr1.llm_backends.fake_server import FakeOpenAIServer, lognormal
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


def run_async(base_url: str, c: int, episodes: int) -> float:
    venv = _venv(base_url, c)
    try:
        started = finished = 0
        turn = {}
        t0 = time.perf_counter()
        for i in range(c):
            venv.reset_one(i, seed=started)
            started += 1
            turn[i] = 0
            venv.submit(i, TURNS[0])
        while finished < episodes:
            for res in venv.collect(timeout=60):
                if res.done:
                    finished += 1
                    if started < episodes:
                        venv.reset_one(res.index, seed=started)
                        started += 1
                        turn[res.index] = 0
                        venv.submit(res.index, TURNS[0])
                else:
                    turn[res.index] += 1
                    venv.submit(res.index, TURNS[turn[res.index]])
        return episodes / (time.perf_counter() - t0)
    finally:
        venv.close()


def run_barrier(base_url: str, c: int, episodes: int) -> float:
    venv = _venv(base_url, c)
    try:
        rounds = math.ceil(episodes / c)
        t0 = time.perf_counter()
        for r in range(rounds):
            venv.reset(seed=r * c)
            for t in TURNS:
                venv.step([t] * c)
        return rounds * c / (time.perf_counter() - t0)
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
    ap.add_argument("--episodes-per-env", type=int, default=6)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    args = ap.parse_args()
    median = args.median_ms / 1000
    mean = median * math.exp(args.sigma ** 2 / 2)
    print(f"fake server latency: lognormal median {args.median_ms:.0f} ms, sigma {args.sigma} "
          f"(mean {mean * 1000:.0f} ms); {CALLS_PER_EPISODE} env-LLM calls per episode\n")
    print(f"{'C':>5}{'ideal ep/s':>12}{'ours ep/s':>11}{'% ideal':>9}{'barrier ep/s':>14}{'ours/barrier':>14}")
    with server_process(median, args.sigma) as base_url:
        for c in args.concurrency:
            episodes = max(20, c * args.episodes_per_env)
            ideal = c / (mean * CALLS_PER_EPISODE)
            ours = run_async(base_url, c, episodes)
            barrier = run_barrier(base_url, c, episodes)
            print(f"{c:>5}{ideal:>12.1f}{ours:>11.1f}{100 * ours / ideal:>8.0f}%{barrier:>14.1f}{ours / barrier:>13.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
