"""``promptr1 serve`` under load: requests/s and latency at 1 / 4 / 16 / 64 concurrent clients, side by side with
the same requests served one at a time (today's ``promptr1 chat`` path).

Both sides play the same episodes: the agent (default SmolLM2-135M-Instruct, float32, on the CPU) against an env
LLM behind the loopback fake OpenAI server with a long-tailed latency of 200 ms median (lognormal, sigma 0.5, capped
at 2 s), same decoding settings (``--max-new-tokens``, ``--max-turns``, temperature 1), same torch thread count.

* **one at a time**: in this process, :meth:`promptr1.evaluation.policies.ModelPolicy.play` on one env per question,
  one question after the other, as ``promptr1 chat`` plays it, for ``--seconds``.
* **serve, N clients**: ``promptr1 serve`` in a subprocess; N asyncio clients (the ``openai`` package) each send a
  request, wait for the answer and send the next, for ``--seconds``; requests still in flight at the end finish
  before the next row and are not counted.

Printed per row: completed requests/s and the speed-up over one at a time, p50 / p95 latency, env-LLM calls and
agent tokens per request, and where the server's time went (from its ``/metrics``): the share of the wall time the
agent was generating, how much of that was prefill (the prompts run through the model before the first sampled
token), and the mean episodes per generation batch (the requests that shared a forward pass).

    python benchmarks/bench_serve.py --seconds 90          # 1/4/16/64 clients, 90 s each (~15 min on 2 busy cores)
    python benchmarks/bench_serve.py --clients 16 --seconds 60   # the 16-client target alone (~4 min)
    python benchmarks/bench_serve.py --clients 1,16 --seconds 30 --model tiny
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import promptr1.testing  # noqa: F401  (registers the `tiny` model)
from promptr1.testing.fake_server import FakeOpenAIServer, lognormal


def questions(n: int) -> list[str]:
    return [f"Which company did founder number {i} start, and in which city?" for i in range(n)]


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def one_at_a_time(args: argparse.Namespace, base_url: str) -> dict:
    """Today's chat path: one episode after the other, for ``args.seconds``."""
    import torch
    from promptr1.commands.serve import ServeConfig
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.envs.tasks import Task
    from promptr1.evaluation.policies import ModelPolicy, rollout_config
    from promptr1.llm_backends import from_settings
    from promptr1.llm_backends.budget import Budget, BudgetedBackend

    from promptr1.core.settings import load_config

    torch.set_num_threads(args.threads)
    os.environ["OPENAI_BASE_URL"] = base_url
    cfg = load_config(ServeConfig, overrides=settings_args(args))
    policy = ModelPolicy.load(cfg.agent, rollout=rollout_config(cfg), device="cpu", seed=cfg.seed)
    backend, _ = from_settings(cfg)
    lat, calls, tokens = [], [], []
    qs = questions(10_000)

    def play(i: int):
        task = Task(question=qs[i], answers=("",), id=f"q{i}")
        env = PromptCollabEnv.from_settings(task, BudgetedBackend(backend, Budget(), owns_inner=False), cfg)
        return policy.play([env], [task])[0]

    play(len(qs) - 1)  # warm-up, not timed (the first turn builds the stop-string checker)
    end = time.perf_counter() + args.seconds
    i = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        ep = play(i)
        t1 = time.perf_counter()
        if t1 <= end:
            lat.append(t1 - t0)
            calls.append(ep.episode_stats.get("env_llm_calls", 0))
            tokens.append(ep.gen_tokens)
        i += 1
    backend.close()
    return {"rps": len(lat) / args.seconds, "lat": lat, "calls": calls, "tokens": tokens}


def settings_args(args: argparse.Namespace) -> list[str]:
    return ["--agent", args.model, "--env-llm", "openai:bench-env", "--cpu", "--max-new-tokens",
            str(args.max_new_tokens), "--max-turns", str(args.max_turns), "--max-in-flight", "256",
            "--request-timeout-s", "600"]


def metrics(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
        return json.load(r)


async def clients(url: str, n: int, seconds: float, warm_up: bool = False) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=900)
    qs = iter(questions(1_000_000))
    lat, calls, tokens, errors = [], [], [], []
    end = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < end or warm_up:
            t0 = time.perf_counter()
            try:
                r = await client.chat.completions.create(model="prompt-r1",
                                                         messages=[{"role": "user", "content": next(qs)}])
            except openai.APIError as exc:
                errors.append(str(exc))
                continue
            t1 = time.perf_counter()
            if warm_up:
                return
            if t1 <= end:
                lat.append(t1 - t0)
                calls.append(r.model_extra["promptr1"]["env_llm_calls"])
                tokens.append(r.usage.completion_tokens)

    await asyncio.gather(*(worker() for _ in range(n)))
    await client.close()
    return {"rps": len(lat) / seconds if seconds else 0.0, "lat": lat, "calls": calls, "tokens": tokens,
            "errors": errors}


def row(name: str, res: dict, base_rps: float | None, extra: str = "") -> str:
    lat = res["lat"]
    speed = f"{res['rps'] / base_rps:.1f}x" if base_rps else "1.0x"
    mean = (lambda xs: statistics.mean(xs) if xs else float("nan"))
    return (f"| {name} | {len(lat)} | {res['rps']:.3f} | {speed} | {percentile(lat, 0.5):.1f} | "
            f"{percentile(lat, 0.95):.1f} | {mean(res['calls']):.1f} | {mean(res['tokens']):.0f} | {extra} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="the agent (default: smollm2)")
    ap.add_argument("--clients", default="1,4,16,64", help="concurrent clients per row (default: 1,4,16,64)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each row (default: 60)")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="agent tokens per turn (default: 48)")
    ap.add_argument("--max-turns", type=int, default=3, help="agent turns per episode (default: 3)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads on both sides (default: 1; benchmarks/README.md says why)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",")]
    print(f"$ python benchmarks/bench_serve.py {shlex.join(sys.argv[1:] if argv is None else argv)}")
    print(f"agent {args.model}, {args.max_new_tokens} tokens a turn, {args.max_turns} turns, {args.seconds:g} s a row, "
          f"{args.threads} torch thread(s), {os.cpu_count()} CPUs; env LLM: fake server, lognormal latency "
          f"(200 ms median, sigma 0.5, cap 2 s)")
    with FakeOpenAIServer(latency=lognormal(0.2, 0.5, cap_s=2.0), record_bodies=False) as env_srv:
        print(f"load before: {load()}", flush=True)
        base = one_at_a_time(args, env_srv.base_url)
        lines = [row("one at a time (chat path)", base, None), ]
        print(lines[0], f"  load {load()}", flush=True)
        env = {**os.environ, "OPENAI_BASE_URL": env_srv.base_url, "OMP_NUM_THREADS": str(args.threads),
               "PROMPTR1_API_KEYS": ""}
        proc = subprocess.Popen([sys.executable, "-m", "promptr1.commands.cli", "serve", "--port", "0",
                                 "--plugins", "promptr1.testing", *settings_args(args)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            line = proc.stdout.readline()
            url = re.search(r"http://[0-9.]+:\d+", line)[0]
            asyncio.run(clients(url, 1, 0.0, warm_up=True))  # one untimed request, as on the other side
            for n in levels:
                before = metrics(url)
                res = asyncio.run(clients(url, n, args.seconds))
                while metrics(url)["in_flight"]:  # stragglers finish before the next row
                    time.sleep(0.5)
                after = metrics(url)
                batches = after["generate_batches"] - before["generate_batches"]
                eps = after["generate_episodes"] - before["generate_episodes"]
                gen = after["generate_s"] - before["generate_s"]
                prefill = after["prefill_s"] - before["prefill_s"]
                extra = (f"generating {100 * min(gen / args.seconds, 1):.0f}% of the time (prefill "
                         f"{100 * prefill / max(gen, 1e-9):.0f}% of that), {eps / max(batches, 1):.1f} episodes a batch")
                if res["errors"]:
                    extra += f", {len(res['errors'])} errors (first: {res['errors'][0][:80]})"
                lines.append(row(f"serve, {n} client{'s' if n > 1 else ''}", res, base["rps"], extra))
                print(lines[-1], f"  load {load()}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=600)
    print()
    print("| | requests | requests/s | vs one at a time | p50 s | p95 s | env calls / req | agent tokens / req | "
          "where the server's time went |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\nload after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
