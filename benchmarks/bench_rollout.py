"""Rollout generation: KV reuse across turns, and our sampler against ``model.generate``.

Two tables, each for the tiny test model and for SmolLM2-135M-Instruct (CPU, float32):

1. **Multi-turn rollouts with and without KV reuse** (``RolloutConfig(kv_reuse=True|False)``): a batch of episodes
   against a stand-in env that answers every agent turn with the same long reply (``--reply`` tokens) for
   ``--turns`` turns. Every agent turn is exactly ``--gen`` tokens (no stop strings, no EOS: the sampler is called
   without EOS ids), so both sides generate the same tokens' worth of work; the turn barrier is on
   (``independent=False``), so both see the same batches. Printed: wall time of ``run_episodes``, its generation
   time (``timings["generate_s"]``), generated tokens/s over that time, prefill tokens per episode
   (``timings["prefill_tokens"]``: tokens run through the model before each turn's first sample).
2. **Our sampler against the library's loop**: :func:`promptr1.agents.rollout.sample_turns` vs
   ``model.generate`` on the same left-padded batch of prompts of different lengths, same ``--new`` tokens, greedy
   and sampled (temperature 1, no top-k / top-p on either side). Neither side stops early: no stop strings and an
   impossible EOS id (-1) on ours, ``min_new_tokens = max_new_tokens`` on the library's (EOS suppressed), so both
   generate ``batch x new`` tokens; both are checked to. ``sample_turns`` also returns each token's log-prob
   (which ``generate`` does not compute here). Printed: generated tokens/s and the ratio.

Both sides of each comparison run in the same process, interleaved (A, B, B, A, A, B, ...: the order flips each
repeat), after a short untimed warm-up call each; medians and [min-max] over ``--repeats`` runs, and the load
average. Torch runs one intra-op thread by default (``--threads``): see the option's help.

    python benchmarks/bench_rollout.py               # tiny + smollm2, 3 repeats (~8 min on 2 shared cores)
    python benchmarks/bench_rollout.py --quick       # smaller batches, 3 turns, 200-token replies (~4 min)
    python benchmarks/bench_rollout.py --models tiny --turns 5 --reply 400
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from typing import Any

import torch

import promptr1.testing  # noqa: E402,F401  (registers the test doubles: the `tiny` model, `echo`/`scripted` env LLMs)

#: A short system message (without one, SmolLM2's template adds its ~30-token default one).
SYSTEM = "You ask the big model."

FILLER = ("The river passes the old mill, turns east below the bridge and reaches the harbour after nine miles; "
          "the city records list its floods by year, the names of the ferries and the tolls paid at each lock. ")


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def rng(xs: list[float], fmt: str = "{:.3f}") -> str:
    return "[" + fmt.format(min(xs)) + "-" + fmt.format(max(xs)) + "]"


def interleaved(fns: dict[str, Any], repeats: int, warm: dict[str, Any]) -> dict[str, list[Any]]:
    """A short untimed warm-up call each (``warm``), then ``repeats`` rounds, the order flipping each round."""
    for fn in warm.values():
        fn()
    names = list(fns)
    out: dict[str, list[Any]] = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            out[n].append(fns[n]())
    return out


# ----------------------------------------------------------------------------- 1. multi-turn, KV reuse


class LongReplyEnv:
    """A stand-in env: the same long reply after each agent turn; the episode ends after ``turns`` agent turns."""

    def __init__(self, turns: int, reply: str):
        self.turns, self.reply = turns, reply

    def reset(self, seed=None, options=None):
        self.task, self.t = options["task"], 0
        return self.task.prompt, {"messages": [{"role": "system", "content": SYSTEM},
                                               {"role": "user", "content": self.task.prompt}]}

    def step(self, action):
        self.t += 1
        if self.t >= self.turns:
            return "", 0.0, True, False, {"env_error": None, "reward_components": {"total": 0.0}}
        return (f"<interaction_response>{self.reply}</interaction_response>", 0.0, False, False,
                {"env_error": None})


def reply_text(tokenizer: Any, n_tokens: int) -> str:
    ids = tokenizer(FILLER * (n_tokens // 20 + 2), add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def bench_multiturn(name: str, model: Any, tok: Any, args, batch: int, turns: int, gen: int, reply: int):
    from promptr1.agents import rollout
    from promptr1.agents.rollout import RolloutConfig, run_episodes
    from promptr1.envs.tasks import Task

    text = reply_text(tok, reply)
    tasks = [Task(question=f"Which river flows through city number {i}?", answers=("x",), id=str(i))
             for i in range(batch)]
    real = rollout.sample_turns

    def no_eos(*a, **kw):  # every turn exactly `gen` tokens
        kw["eos_token_ids"] = []
        return real(*a, **kw)

    def run(kv: bool, turns: int = turns, gen: int = gen, batch: int = batch):
        def one() -> dict[str, float]:
            cfg = RolloutConfig(max_new_tokens=gen, max_seq_len=1 << 15, temperature=1.0, kv_reuse=kv,
                                stop_strings=(), independent=False)
            envs = [LongReplyEnv(turns, text) for _ in tasks[:batch]]
            timings: dict[str, float] = {}
            rollout.sample_turns = no_eos
            try:
                t0 = time.perf_counter()
                eps = run_episodes(model, tok, envs, tasks[:batch], list(range(batch)), cfg,
                                   generator=torch.Generator().manual_seed(0), timings=timings, seed=0)
                wall = time.perf_counter() - t0
            finally:
                rollout.sample_turns = real
            gen_tokens = sum(e.gen_tokens for e in eps)
            assert gen_tokens == batch * turns * gen, (gen_tokens, batch, turns, gen)
            assert all(e.turns == turns and not e.overflow for e in eps)
            return {"wall_s": wall, "generate_s": timings["generate_s"], "env_s": timings["env_s"],
                    "gen_tok_s": gen_tokens / timings["generate_s"],
                    "prefill_per_ep": timings.get("prefill_tokens", 0.0) / batch,
                    "seq_len": statistics.mean(len(e.ids) for e in eps)}
        return one

    load0 = load_avg()
    res = interleaved({"KV reuse on": run(True), "KV reuse off": run(False)}, args.repeats,
                      warm={"on": run(True, 2, 4, 2), "off": run(False, 2, 4, 2)})
    return {"model": name, "settings": f"{batch} episodes x {turns} turns, {gen} gen tok/turn, {reply}-tok replies",
            "res": res, "load": f"{load0} -> {load_avg()}"}


# ----------------------------------------------------------------------------- 2. sample_turns vs generate


def bench_sampler(name: str, model: Any, tok: Any, args, batch: int, new: int):
    from promptr1.agents.rollout import sample_turns
    from promptr1.envs.tasks import Task
    from transformers import GenerationConfig

    # Prompts of different lengths (left padding on both sides): 1 to `batch` repeats of a clause.
    prompts = []
    for i in range(batch):
        q = f"Which river flows through city number {i}" + ", and past which mill" * (i + 1) + "?"
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Task(question=q, answers=("x",)).prompt}]
        prompts.append(tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(map(len, prompts))
    input_ids = torch.full((batch, width), pad, dtype=torch.long)
    attn = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p)
        attn[i, width - len(p):] = 1

    def ours(temperature: float, new: int = new):
        def one():
            t0 = time.perf_counter()
            out = sample_turns(model, tok, prompts, max_new_tokens=new, temperature=temperature, stop_strings=(),
                               eos_token_ids=[-1], generator=torch.Generator().manual_seed(0))
            dt = time.perf_counter() - t0
            assert all(len(s.ids) == new for s in out)
            return dt, [s.ids for s in out]
        return one

    def library(sampled: bool, new: int = new):
        kw = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sampled else {"do_sample": False}
        gc = GenerationConfig(max_new_tokens=new, min_new_tokens=new, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                              use_cache=True, **kw)

        def one():
            torch.manual_seed(0)
            t0 = time.perf_counter()
            out = model.generate(input_ids=input_ids, attention_mask=attn, generation_config=gc)
            dt = time.perf_counter() - t0
            assert out.shape[1] - width == new, (out.shape, width, new)
            return dt, out[:, width:].tolist()
        return one

    model.eval()
    load0 = load_avg()
    res = interleaved({"ours greedy": ours(0.0), "generate greedy": library(False),
                       "ours sampled": ours(1.0), "generate sampled": library(True)}, args.repeats,
                      warm={"a": ours(0.0, 4), "b": library(False, 4), "c": ours(1.0, 4), "d": library(True, 4)})
    def upto_eos(ids: list[int]) -> int:  # generate suppresses EOS, ours may pick it: compare up to there
        return ids.index(tok.eos_token_id) if tok.eos_token_id in ids else len(ids)

    same = sum(a[:upto_eos(a)] == b[:upto_eos(a)] for a, b in zip(res["ours greedy"][0][1], res["generate greedy"][0][1]))
    times = {k: [dt for dt, _ in v] for k, v in res.items()}
    return {"model": name, "settings": f"batch {batch}, prompts {min(map(len, prompts))}-{width} tok, {new} new tok",
            "times": times, "tokens": batch * new, "greedy_same": f"{same}/{batch}", "load": f"{load0} -> {load_avg()}"}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    p.add_argument("--batch", type=int, default=None, help="episodes per rollout (default: tiny 8, smollm2 2)")
    p.add_argument("--turns", type=int, default=None, help="agent turns per episode (default 4; --quick 3)")
    p.add_argument("--gen", type=int, default=None, help="tokens per agent turn (default: tiny 64, smollm2 32)")
    p.add_argument("--reply", type=int, default=None, help="tokens of each env reply (default 300; --quick 200)")
    p.add_argument("--sampler-batch", type=int, default=None, help="sampler table: batch (default 8; --quick 4)")
    p.add_argument("--new", type=int, default=None,
                   help="sampler table: new tokens (default: tiny 128, smollm2 64; --quick: 64, 32)")
    p.add_argument("--quick", action="store_true", help="smaller: 3 turns, 200-token replies, smaller batches")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine two threads wait on each "
                        "other whenever another process holds a core, 5-10x slower; 0: leave torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    args.turns = args.turns or (3 if q else 4)
    args.reply = args.reply or (200 if q else 300)
    args.sampler_batch = args.sampler_batch or (4 if q else 8)
    from promptr1.agents.models import load_policy
    from transformers import __version__ as tf_version

    print("command: python benchmarks/bench_rollout.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    print(f"torch {torch.__version__}, transformers {tf_version}, CPU, float32, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores; load average at start: {load_avg()}")
    multi, samp = [], []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model, tok = load_policy(name, dtype=torch.float32)
        model.eval()
        small = name == "tiny"
        batch = args.batch or ((4 if q else 8) if small else 2)
        gen = args.gen or ((48 if q else 64) if small else (24 if q else 32))
        new = args.new or ((64 if q else 128) if small else (32 if q else 64))
        t0 = time.perf_counter()
        multi.append(bench_multiturn(name, model, tok, args, batch, args.turns, gen, args.reply))
        samp.append(bench_sampler(name, model, tok, args, args.sampler_batch, new))
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        del model

    print()
    print(f"1. multi-turn rollout (run_episodes), KV cache kept across turns or not; median of {args.repeats} "
          "[min-max], interleaved")
    head = (f"{'model':<9}{'side':<14}{'wall s':>8} {'[min-max]':<16}{'gen s':>8}{'gen tok/s':>10} {'[min-max]':<14}"
            f"{'prefill tok/ep':>15}{'seq len':>9}{'wall ratio':>11}")
    print(head)
    print("-" * len(head))
    for m in multi:
        on, off = m["res"]["KV reuse on"], m["res"]["KV reuse off"]
        for side, rs in (("KV reuse on", on), ("KV reuse off", off)):
            walls, tps = [r["wall_s"] for r in rs], [r["gen_tok_s"] for r in rs]
            ratio = f"{med(walls) / med([r['wall_s'] for r in off]):.2f}x" if rs is on else ""
            print(f"{m['model']:<9}{side:<14}{med(walls):>8.3f} {rng(walls):<16}{med([r['generate_s'] for r in rs]):>8.3f}"
                  f"{med(tps):>10.0f} {rng(tps, '{:.0f}'):<14}{med([r['prefill_per_ep'] for r in rs]):>15.0f}"
                  f"{med([r['seq_len'] for r in rs]):>9.0f}{ratio:>11}")
    for m in multi:
        print(f"  {m['model']}: {m['settings']}; load {m['load']}")

    print()
    print(f"2. generation tokens/s: sample_turns vs model.generate, same batch and prompts, no early stop; median of "
          f"{args.repeats} [min-max], interleaved")
    head = f"{'model':<9}{'mode':<9}{'ours tok/s':>11} {'[min-max]':<14}{'generate tok/s':>15} {'[min-max]':<14}{'ours/generate':>14}"
    print(head)
    print("-" * len(head))
    for s in samp:
        for mode in ("greedy", "sampled"):
            o = [s["tokens"] / t for t in s["times"][f"ours {mode}"]]
            g = [s["tokens"] / t for t in s["times"][f"generate {mode}"]]
            print(f"{s['model']:<9}{mode:<9}{med(o):>11.0f} {rng(o, '{:.0f}'):<14}{med(g):>15.0f} {rng(g, '{:.0f}'):<14}"
                  f"{med(o) / med(g):>13.2f}x")
    for s in samp:
        print(f"  {s['model']}: {s['settings']}; greedy rows identical to generate's (up to ours' first "
              f"EOS, which generate suppresses): {s['greedy_same']}; load {s['load']}")
    print(f"load average at end: {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
