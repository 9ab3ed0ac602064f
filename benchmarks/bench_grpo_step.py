"""One GRPO step (rollout + update): promptr1's GRPOTrainer vs TRL's GRPOTrainer, same work.

Same tiny model (``promptr1.testing.tiny_model``), same prompts, same number of questions,
group size, completion length, temperature, one update epoch, no KL (so neither builds a
reference model), same reward function of the completion text. Single-turn episodes, because
TRL's trainer is single-turn. Each trainer runs ``--warmup`` steps first (not timed), then
``--steps`` timed steps; the table shows seconds per step and the split between generation
and the rest (scoring + update).

TRL is an optional dependency (``pip install trl``); without it only our column is printed.

    python benchmarks/bench_grpo_step.py [--questions 4] [--group 4] [--tokens 64] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch


def reward_of(text: str) -> float:
    """A reward with within-group variance: depends on the completion's characters."""
    return (sum(map(ord, text)) % 7) / 3.0 - 1.0


class OneTurnEnv:
    """A single-turn env with :func:`reward_of` as the reward (what TRL's trainer does too)."""

    def reset(self, seed=None, options=None):
        self.task = options["task"]
        return self.task.prompt, {"messages": [{"role": "user", "content": self.task.prompt}]}

    def step(self, action):
        r = reward_of(action)
        return "", r, True, False, {"env_error": None, "reward_components": {"total": r}}


def make_tasks(n: int):
    from promptr1.envs.tasks import Task

    return [Task(question=f"Which river flows through city number {i}?", answers=("nile",), id=str(i)) for i in range(n)]


def bench_ours(args, path: str) -> dict[str, float]:
    from promptr1.agents.config import GRPOConfig
    from promptr1.agents.trainer import GRPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(model=path, steps=args.warmup + args.steps, batch_questions=args.questions,
                         group_size=args.group, max_new_tokens=args.tokens, max_seq_len=4096, max_turns=1,
                         kl_coef=0.0, lr=1e-6, micro_batch_size=args.questions * args.group, minibatches=1,
                         recompute_old_logp=False, progress=False, output_dir=tmp, cpu=True, num_transcripts=0)
        tr = GRPOTrainer(cfg, tasks=make_tasks(64), env_factory=OneTurnEnv)
        for _ in range(args.warmup):
            tr.train_step()
        gen, total, toks = [], [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            m = tr.train_step()
            total.append(time.perf_counter() - t0)
            gen.append(m["time/generate_s"])
            toks.append(m["rollout/action_tokens_mean"])
    return {"step_s": statistics.mean(total), "generate_s": statistics.mean(gen),
            "rest_s": statistics.mean(total) - statistics.mean(gen), "completion_tokens": statistics.mean(toks)}


def bench_trl(args, path: str) -> dict[str, float] | None:
    try:
        import trl
        from datasets import Dataset
        from trl import GRPOConfig as TRLConfig
        from trl import GRPOTrainer as TRLTrainer
    except ImportError:
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = [{"prompt": [{"role": "user", "content": t.prompt}]} for t in make_tasks(64)]
    ds = Dataset.from_list(rows)

    def reward_fn(completions, **_):
        out = []
        for c in completions:
            text = c[-1]["content"] if isinstance(c, list) else c
            out.append(reward_of(text))
        return out

    n = args.questions * args.group
    with tempfile.TemporaryDirectory() as tmp:
        targs = TRLConfig(output_dir=tmp, per_device_train_batch_size=n, gradient_accumulation_steps=1,
                          num_generations=args.group, max_completion_length=args.tokens, temperature=1.0,
                          learning_rate=1e-6, beta=0.0, max_steps=args.warmup + args.steps, logging_steps=1,
                          report_to=[], save_strategy="no", use_cpu=True, bf16=False, fp16=False,
                          num_iterations=1, seed=0, dataloader_num_workers=0, disable_tqdm=True)
        trainer = TRLTrainer(model=model, reward_funcs=reward_fn, args=targs, train_dataset=ds, processing_class=tok)
        gen_times: list[float] = []
        inner = trainer._generate_and_score_completions

        def timed(*a, **kw):
            t0 = time.perf_counter()
            out = inner(*a, **kw)
            gen_times.append(time.perf_counter() - t0)
            return out

        trainer._generate_and_score_completions = timed
        step_times: list[float] = []
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.t0 = time.perf_counter()

            def on_step_end(self, *a, **k):
                step_times.append(time.perf_counter() - self.t0)

        trainer.add_callback(Clock())
        trainer.train()
        comp = [h.get("completions/mean_length") for h in trainer.state.log_history if "completions/mean_length" in h]
    st, gt = step_times[args.warmup:], gen_times[args.warmup:]
    return {"step_s": statistics.mean(st), "generate_s": statistics.mean(gt),
            "rest_s": statistics.mean(st) - statistics.mean(gt),
            "completion_tokens": float(statistics.mean(comp[args.warmup:])) if comp else float("nan"),
            "version": trl.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from promptr1.testing.tiny_model import tiny_model_path

    path = str(tiny_model_path())
    ours = bench_ours(args, path)
    theirs = bench_trl(args, path)
    print(f"one GRPO step, tiny model, {args.questions} questions x {args.group} rollouts, <= {args.tokens} "
          f"completion tokens, CPU, {torch.get_num_threads()} threads; mean of {args.steps} steps after {args.warmup} warm-up")
    head = f"{'':<22}{'step s':>10}{'generate s':>12}{'rest s':>10}{'compl. tokens':>15}"
    print(head)
    print("-" * len(head))
    for name, r in (("promptr1", ours), (f"TRL {theirs['version']}" if theirs else "TRL", theirs)):
        if r is None:
            print(f"{name:<22}  (not installed: pip install trl)")
            continue
        print(f"{name:<22}{r['step_s']:>10.3f}{r['generate_s']:>12.3f}{r['rest_s']:>10.3f}{r['completion_tokens']:>15.1f}")
    if theirs:
        print(f"ratio promptr1 / TRL: step {ours['step_s'] / theirs['step_s']:.2f}x, generation "
              f"{ours['generate_s'] / theirs['generate_s']:.2f}x, rest {ours['rest_s'] / max(theirs['rest_s'], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
