"""The environment's own cost per step (parse, reward, bookkeeping) with a zero-latency backend.

Target (issue 3): median under 100 µs per step. Prints a table of per-step latencies by step kind,
next to a bare baseline: the same backend call without the environment around it.

    python benchmarks/bench_env_overhead.py [--episodes 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.tasks import Task
from promptr1.llm_backends import BaseBackend, Completion

PROMPT = "<think>I need the founder first.</think><interaction_prompt>Who founded Vantrel Corp?</interaction_prompt>"
ANSWER = "<think>The founder was born in Dremland.</think><answer>Dremland</answer>"


class ZeroLatency(BaseBackend):
    name = "zero"
    deterministic = True

    def complete(self, messages, **sampling):
        return Completion(text="Vantrel Corp was founded by Mira Osk.")


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=2000)
    args = ap.parse_args()
    tasks = [Task(f"In which country was the founder of Corp {i} born?", (f"Land {i}",), id=str(i)) for i in range(64)]
    backend = ZeroLatency()
    env = PromptCollabEnv(task=tasks, env_llm=backend, max_turns=5)
    timings: dict[str, list[float]] = {"reset": [], "prompt step": [], "answer step": [], "bare backend call": []}
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "Who founded Vantrel Corp?"}]
    for ep in range(args.episodes):
        t0 = time.perf_counter_ns()
        env.reset(seed=ep)
        t1 = time.perf_counter_ns()
        timings["reset"].append((t1 - t0) / 1e3)
        for _ in range(2):
            t0 = time.perf_counter_ns()
            env.step(PROMPT)
            timings["prompt step"].append((time.perf_counter_ns() - t0) / 1e3)
        t0 = time.perf_counter_ns()
        env.step(ANSWER)
        timings["answer step"].append((time.perf_counter_ns() - t0) / 1e3)
        t0 = time.perf_counter_ns()
        backend.complete(msgs)
        timings["bare backend call"].append((time.perf_counter_ns() - t0) / 1e3)
    all_steps = timings["prompt step"] + timings["answer step"]
    print(f"PromptCollabEnv overhead per call, {args.episodes} episodes (µs)\n")
    print(f"{'what':<22}{'median':>10}{'p90':>10}{'p99':>10}")
    for name, xs in [*timings.items(), ("all steps", all_steps)]:
        print(f"{name:<22}{statistics.median(xs):>10.1f}{_pct(xs, 0.9):>10.1f}{_pct(xs, 0.99):>10.1f}")
    med = statistics.median(all_steps) - statistics.median(timings["bare backend call"])
    verdict = "meets" if statistics.median(all_steps) < 100 else "MISSES"
    print(f"\nmedian step {statistics.median(all_steps):.1f} µs (env's own share ~{med:.1f} µs): {verdict} the 100 µs target")


if __name__ == "__main__":
    main()
