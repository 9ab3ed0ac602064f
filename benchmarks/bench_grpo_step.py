"""One GRPO step (rollout + update): promptr1's GRPOTrainer vs TRL's GRPOTrainer, equal work on both sides.

What is held equal (and printed with the table):

* model, weights, dtype (float32 on CPU), prompts (the same system + user chat through the same chat template; the
  questions all have the same token count, since each trainer draws them in its own order), questions x group
  size, temperature 1, no top-k / top-p, no KL term (neither side builds a reference model), the same reward
  function of the completion text, single-turn episodes (TRL's trainer is single-turn);
* completion length: every completion is exactly ``--tokens`` tokens on both sides (EOS suppressed with
  ``min_new_tokens`` on TRL's side, no EOS id and no stop strings on ours), so both generate and train on the
  same number of tokens;
* gradient checkpointing: set explicitly on both sides (off by default; TRL 1.16 turns it *on* by default, so it
  is turned off there; a ``+gc`` row turns it on for both) and read back from the models;
* forward passes: old log-probs are recomputed on neither side or on both. TRL 1.16 recomputes them only when
  ``gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0`` (or with vLLM's IS correction);
  with ``num_iterations=1`` and ``steps_per_generation = gradient_accumulation_steps = 1`` it does not (it uses
  ``per_token_logps.detach()``), so our side runs with ``recompute_old_logp=False``. A ``+mu2`` row runs two
  updates per generation (TRL ``num_iterations=2``; ours ``update_epochs=2``): TRL then recomputes the old
  log-probs, and so does ours (``recompute_old_logp=True``); its times are per generation (two optimizer steps).
  The forward passes are *counted* on both models (a hook on the top-level module) and printed;
* optimizer: ``torch.optim.AdamW`` (for-loop implementation) on both (TRL's default on torch >= 2.8 would be the
  fused kernel, ``adamw_torch_fused``; ours is not configurable), grad-norm clipping at 1.0 on both, one
  micro-batch (the whole batch) per optimizer step.

The time split is defined and measured the same way on both sides, by wrapping the same kinds of calls:

* generation: wall time inside the sampling call (ours: ``rollout.sample_turns``; TRL: ``_generate_single_turn``,
  i.e. left-padding + ``model.generate`` + EOS trim);
* update: from the start of the first forward pass with gradients enabled to the end of ``optimizer.step()``
  (forward, loss, backward, clipping, AdamW), summed over the optimizer steps of the step;
* scoring (and the rest): step time - generation - update: prompt tokenisation and chat template, rewards (our
  env step), collation, advantages, old log-probs when recomputed, metrics and logging.

Step time is the wall time of one training step in the trainer's own loop: ours ``train_step()``; TRL's from
the end of its previous step to the end of this one (both marked in an ``on_step_end`` callback), so its logging
(which follows ``on_step_end``) and data loading are inside. The two trainers run interleaved in one process (TRL
step, our step, TRL step, ...: our step runs inside that callback, after TRL's end mark and before its next start
mark), ``--warmup`` steps each are dropped, then ``--steps`` timed steps each; the tables show medians and
[min-max], the per-pair ratios, and the load average before and after each row.

Sizes: the tiny test model with 4 questions x 4 rollouts x 64 tokens; SmolLM2-135M-Instruct with 1 x 4 x 32
(its update is ~10 s a step on one contended core). Torch runs one intra-op thread by default (``--threads``):
on a shared 2-core machine two threads wait on each other whenever another process holds a core, which made
steps 5-10x slower and the timings erratic.

TRL is an optional dependency (``pip install trl``); without it only our side is measured.

    python benchmarks/bench_grpo_step.py                  # rows: tiny, tiny+gc, tiny+mu2, smollm2 (~6 min)
    python benchmarks/bench_grpo_step.py --quick          # rows: tiny, smollm2; 3 timed steps (~2.5 min)
    python benchmarks/bench_grpo_step.py --rows tiny,smollm2+gc --steps 5
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

import promptr1.testing  # noqa: E402,F401  (registers the test doubles: the `tiny` model, `echo`/`scripted` env LLMs)


def reward_of(text: str) -> float:
    """A reward with within-group variance: depends on the completion's characters."""
    return (sum(map(ord, text)) % 7) / 3.0 - 1.0


#: A short system message on both sides (without one, SmolLM2's template adds its ~30-token default one).
SYSTEM = "Answer briefly."


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


class OneTurnEnv:
    """A single-turn env with :func:`reward_of` as the reward (what TRL's trainer does too)."""

    def reset(self, seed=None, options=None):
        self.task = options["task"]
        return self.task.prompt, {"messages": chat(self.task.prompt)}

    def step(self, action):
        r = reward_of(action)
        return "", r, True, False, {"env_error": None, "reward_components": {"total": r}}


def make_tasks(n: int, path: str):
    """``n`` distinct questions whose chat-templated prompts all have the same number of tokens under the model's
    tokenizer (both trainers draw questions in their own order, so equal lengths keep the prompt work equal)."""
    from promptr1.envs.tasks import Task
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    by_len: dict[int, list[Task]] = {}
    for i in range(20 * n):
        t = Task(question=f"Which river flows through city number {i}?", answers=("nile",), id=str(i))
        ids = tok.apply_chat_template(chat(t.prompt), add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        by_len.setdefault(len(ids), []).append(t)
    best = max(by_len.values(), key=len)
    if len(best) < n:
        raise RuntimeError(f"only {len(best)} equal-length questions for {path}")
    return best[:n]


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- one probe per side


@dataclass
class Probe:
    """Counts forward passes of one model and times generation and update the same way on both sides."""

    in_gen: bool = False
    upd_start: float | None = None
    gen_s: float = 0.0
    update_s: float = 0.0
    fwd_gen: int = 0
    fwd_nograd: int = 0
    fwd_grad: int = 0
    opt_steps: int = 0
    completion_tokens: list[float] = field(default_factory=list)
    prompt_tokens: list[float] = field(default_factory=list)

    def attach(self, model: Any) -> None:
        model.register_forward_pre_hook(self._pre)

    def _pre(self, module, args):
        if self.in_gen:
            self.fwd_gen += 1
        elif torch.is_grad_enabled():
            self.fwd_grad += 1
            if self.upd_start is None:
                self.upd_start = time.perf_counter()
        else:
            self.fwd_nograd += 1

    def wrap_generation(self, fn, prompts_of, completions_of):
        def timed(*a, **kw):
            self.in_gen = True
            t0 = time.perf_counter()
            try:
                out = fn(*a, **kw)
            finally:
                self.gen_s += time.perf_counter() - t0
                self.in_gen = False
            prompts, comps = prompts_of(a, kw), completions_of(out)
            self.prompt_tokens.append(statistics.mean(len(p) for p in prompts))
            self.completion_tokens.append(statistics.mean(len(c) for c in comps))
            return out

        return timed

    def wrap_optimizer_step(self, fn):
        def timed(*a, **kw):
            out = fn(*a, **kw)
            if self.upd_start is not None:
                self.update_s += time.perf_counter() - self.upd_start
                self.upd_start = None
            self.opt_steps += 1
            return out

        return timed

    def take(self) -> dict[str, float]:
        """The counters since the last call (then reset)."""
        out = {"generate_s": self.gen_s, "update_s": self.update_s, "fwd_gen": self.fwd_gen,
               "fwd_nograd": self.fwd_nograd, "fwd_grad": self.fwd_grad, "opt_steps": self.opt_steps,
               "completion_tokens": statistics.mean(self.completion_tokens) if self.completion_tokens else float("nan"),
               "prompt_tokens": statistics.mean(self.prompt_tokens) if self.prompt_tokens else float("nan")}
        self.gen_s = self.update_s = 0.0
        self.fwd_gen = self.fwd_nograd = self.fwd_grad = self.opt_steps = 0
        self.completion_tokens, self.prompt_tokens = [], []
        return out


def _add(acc: dict[str, float] | None, d: dict[str, float]) -> dict[str, float]:
    if acc is None:
        return dict(d)
    out = dict(acc)
    for k, v in d.items():
        if k in ("completion_tokens", "prompt_tokens"):  # per-sequence means: keep the generation's
            out[k] = acc[k] if math.isnan(v) else v
        else:
            out[k] = acc[k] + v
    return out


# ----------------------------------------------------------------------------- the two trainers


@dataclass
class Row:
    model: str  # tiny | smollm2
    gc: bool
    mu: int
    questions: int
    group: int
    tokens: int

    @property
    def label(self) -> str:
        return self.model + ("+gc" if self.gc else "") + (f"+mu{self.mu}" if self.mu > 1 else "")

    @property
    def settings(self) -> str:
        return (f"{self.questions}x{self.group}x{self.tokens} tok, GC {'on' if self.gc else 'off'}, "
                f"old logp {'recomputed' if self.mu > 1 else 'not recomputed'}, mu={self.mu}")


def model_path(name: str) -> str:
    if name == "tiny":
        from promptr1.testing.tiny_model import tiny_model_path

        return str(tiny_model_path())
    from promptr1.agents.models import resolve_model_path

    return resolve_model_path(name)


def make_ours(row: Row, path: str, tmp: str, tasks):
    """Our trainer, its probe, and a closure running one step (returns its wall time)."""
    from promptr1.agents import rollout
    from promptr1.agents.config import GRPOConfig
    from promptr1.agents.trainer import GRPOTrainer

    cfg = GRPOConfig(model=path, steps=10**6, batch_questions=row.questions, group_size=row.group,
                     max_new_tokens=row.tokens, max_seq_len=4096, max_turns=1, temperature=1.0, top_p=1.0,
                     kl_coef=0.0, lr=1e-6, micro_batch_size=row.questions * row.group, minibatches=1,
                     update_epochs=row.mu, recompute_old_logp=row.mu > 1, gradient_checkpointing=row.gc,
                     max_grad_norm=1.0, mixed_precision="no", model_dtype="fp32", progress=False, output_dir=tmp,
                     cpu=True, num_transcripts=0)
    tr = GRPOTrainer(cfg, tasks=tasks, env_factory=OneTurnEnv)
    probe = Probe()
    probe.attach(tr.unwrapped_model)
    real = rollout.sample_turns

    def no_eos_sampler(*a, **kw):  # every completion exactly max_new_tokens long, as on TRL's side
        kw["eos_token_ids"], kw["stop_strings"] = [], ()
        return real(*a, **kw)

    rollout.sample_turns = probe.wrap_generation(
        no_eos_sampler, lambda a, kw: a[2] if len(a) > 2 else kw["prompts"], lambda out: [s.ids for s in out])
    tr.optimizer.step = probe.wrap_optimizer_step(tr.optimizer.step)

    def step() -> float:
        t0 = time.perf_counter()
        tr.train_step()
        return time.perf_counter() - t0

    def restore() -> None:
        rollout.sample_turns = real

    info = {"gc": bool(getattr(tr.unwrapped_model, "is_gradient_checkpointing", False)),
            "optimizer": type(getattr(tr.optimizer, "optimizer", tr.optimizer)).__name__ + _fused(tr.optimizer)}
    return tr, probe, step, restore, info


def _fused(opt: Any) -> str:
    d = getattr(opt, "optimizer", opt).defaults
    return " (fused)" if d.get("fused") else (" (foreach)" if d.get("foreach") else " (for-loop)")


def run_row(row: Row, args) -> dict[str, Any]:
    """Both trainers on one row, interleaved; per-step records of each."""
    path = model_path(row.model)
    tasks = make_tasks(64, path)
    with tempfile.TemporaryDirectory() as tmp_ours, tempfile.TemporaryDirectory() as tmp_trl:
        ours, ours_probe, ours_step, restore, ours_info = make_ours(row, path, tmp_ours, tasks)
        ours_recs: list[dict[str, float]] = []

        def one_of_ours() -> None:
            wall = ours_step()
            ours_recs.append({"step_s": wall, **ours_probe.take()})

        try:
            trl_out = run_trl(row, path, tmp_trl, tasks, args, one_of_ours)
            if trl_out is None:  # no TRL: ours alone
                for _ in range(args.warmup + args.steps):
                    one_of_ours()
        finally:
            restore()
        del ours
    res = {"ours": ours_recs[args.warmup:], "ours_info": ours_info}
    if trl_out is not None:
        res["trl"], res["trl_info"] = trl_out[0][args.warmup:], trl_out[1]
    return res


def run_trl(row: Row, path: str, tmp: str, tasks, args, between) -> tuple[list[dict[str, float]], dict] | None:
    """TRL's trainer for ``warmup + steps`` generations; ``between()`` (our step) runs after each, untimed."""
    try:
        import trl
        from datasets import Dataset
        from trl import GRPOConfig as TRLConfig
        from trl import GRPOTrainer as TRLTrainer
    except ImportError:
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": chat(t.prompt)} for t in tasks])

    def reward_fn(completions, **_):
        return [reward_of(c[-1]["content"] if isinstance(c, list) else c) for c in completions]

    n = row.questions * row.group
    cycles = args.warmup + args.steps
    targs = TRLConfig(output_dir=tmp, per_device_train_batch_size=n, gradient_accumulation_steps=1,
                      steps_per_generation=1, num_iterations=row.mu, num_generations=row.group,
                      max_completion_length=row.tokens, generation_kwargs={"min_new_tokens": row.tokens},
                      temperature=1.0, top_p=1.0, top_k=0, learning_rate=1e-6, beta=0.0,
                      max_steps=cycles * row.mu, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                      bf16=False, fp16=False, gradient_checkpointing=row.gc, optim="adamw_torch", max_grad_norm=1.0,
                      seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = TRLTrainer(model=model, reward_funcs=reward_fn, args=targs, train_dataset=ds, processing_class=tok)
    probe = Probe()
    probe.attach(trainer.model)
    trainer._generate_single_turn = probe.wrap_generation(
        trainer._generate_single_turn, lambda a, kw: a[0] if a else kw["prompt_ids"], lambda out: out[0])
    recs: list[dict[str, float]] = []
    info: dict[str, Any] = {"version": trl.__version__}
    state = {"resume": None, "acc": None, "wall": 0.0, "k": 0}

    class Interleave(TrainerCallback):
        def on_train_begin(self, a, s, c, **kw):
            trainer.optimizer.step = probe.wrap_optimizer_step(trainer.optimizer.step)
            info["optimizer"] = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__ + _fused(trainer.optimizer)
            info["gc"] = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
            state["resume"] = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            state["wall"] += time.perf_counter() - state["resume"]
            state["acc"] = _add(state["acc"], probe.take())
            state["k"] += 1
            if state["k"] % row.mu == 0:  # one generation (and its mu optimizer steps) done
                recs.append({"step_s": state["wall"], **state["acc"]})
                state["wall"], state["acc"] = 0.0, None
                between()
            state["resume"] = time.perf_counter()

    trainer.add_callback(Interleave())
    trainer.train()
    return recs, info


# ----------------------------------------------------------------------------- report


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float]) -> str:
    return f"[{min(xs):.3f}-{max(xs):.3f}]" if xs else ""


def summary(recs: list[dict[str, float]]) -> dict[str, float]:
    s = {k: med([r[k] for r in recs]) for k in recs[0]}
    s["scoring_s"] = med([r["step_s"] - r["generate_s"] - r["update_s"] for r in recs])
    return s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=None,
                   help="comma-separated rows: MODEL[+gc][+mu2], MODEL tiny or smollm2 "
                        "(default: tiny,tiny+gc,tiny+mu2,smollm2; --quick: tiny,smollm2)")
    p.add_argument("--questions", type=int, default=4, help="tiny model: questions per step")
    p.add_argument("--group", type=int, default=4, help="tiny model: rollouts per question")
    p.add_argument("--tokens", type=int, default=64, help="tiny model: completion tokens")
    p.add_argument("--smol-questions", type=int, default=1, help="SmolLM2: questions per step")
    p.add_argument("--smol-group", type=int, default=4, help="SmolLM2: rollouts per question")
    p.add_argument("--smol-tokens", type=int, default=32, help="SmolLM2: completion tokens")
    p.add_argument("--steps", type=int, default=None, help="timed steps per side (default 5; --quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine two threads wait on each "
                        "other whenever another process holds a core, which made steps 5-10x slower and noisy; "
                        "0: leave torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps is None:
        args.steps = 3 if args.quick else 5
    specs = (args.rows or ("tiny,smollm2" if args.quick else "tiny,tiny+gc,tiny+mu2,smollm2")).split(",")
    rows = []
    for spec in specs:
        parts = spec.strip().split("+")
        name, flags = parts[0], set(parts[1:])
        if name not in ("tiny", "smollm2") or not flags <= {"gc", "mu2"}:
            p.error(f"bad row {spec!r}: expected MODEL[+gc][+mu2] with MODEL tiny or smollm2")
        q, g, t = ((args.questions, args.group, args.tokens) if name == "tiny"
                   else (args.smol_questions, args.smol_group, args.smol_tokens))
        rows.append(Row(name, "gc" in flags, 2 if "mu2" in flags else 1, q, g, t))

    import transformers

    print("command: python benchmarks/bench_grpo_step.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, CPU, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores; load average at start: {load_avg()}")
    results = []
    for row in rows:
        t0 = time.perf_counter()
        load0 = load_avg()
        r = run_row(row, args)
        r["row"], r["load"], r["wall"] = row, f"{load0} -> {load_avg()}", time.perf_counter() - t0
        results.append(r)
        print(f"  row {row.label}: {r['wall']:.0f} s, load {r['load']}", flush=True)

    print()
    print(f"one GRPO step, median of {args.steps} steps per side after {args.warmup} warm-up, interleaved "
          f"(TRL, ours, TRL, ours, ...); times in s, [min-max]; scoring = step - generation - update; "
          f"ratio = promptr1 / TRL (median step times)")
    head = (f"{'side':<11}{'model':<9}{'settings':<48}{'step s':>8} {'[min-max]':<16}{'gen s':>7}{'score s':>8}"
            f"{'update s':>9}{'ratio':>7}")
    print(head)
    print("-" * len(head))
    checks = []
    for r in results:
        row = r["row"]
        sides = [("promptr1", r["ours"], r["ours_info"])]
        if "trl" in r:
            sides.append((f"TRL {r['trl_info']['version']}", r["trl"], r["trl_info"]))
        sums = [summary(recs) for _, recs, _ in sides]
        for i, ((name, recs, info), s) in enumerate(zip(sides, sums)):
            ratio = f"{s['step_s'] / sums[1]['step_s']:.2f}x" if i == 0 and len(sums) == 2 else ""
            steps = [x["step_s"] for x in recs]
            print(f"{name:<11}{row.model:<9}{row.settings:<48}{s['step_s']:>8.3f} {spread(steps):<16}"
                  f"{s['generate_s']:>7.3f}{s['scoring_s']:>8.3f}{s['update_s']:>9.3f}{ratio:>7}")
            checks.append((name, row.label, s, info))
    print()
    print("equal-work checks, per step (medians): prompt / completion tokens per sequence; forward passes of the "
          "model inside generation / without grad outside it (old log-probs) / with grad (the update); optimizer "
          "steps; gradient checkpointing and optimizer as read back from the trainers")
    head = f"{'side':<11}{'row':<14}{'prompt':>7}{'compl':>7}{'fwd gen/nograd/grad':>21}{'opt':>5}  {'GC':<5}{'optimizer':<20}"
    print(head)
    print("-" * len(head))
    for name, label, s, info in checks:
        fwd = "/".join(f"{s[k]:.0f}" for k in ("fwd_gen", "fwd_nograd", "fwd_grad"))
        print(f"{name:<11}{label:<14}{s['prompt_tokens']:>7.1f}{s['completion_tokens']:>7.1f}"
              f"{fwd:>21}{int(s['opt_steps']):>5}  "
              f"{'on' if info['gc'] else 'off':<5}{info['optimizer']:<20}")
    print()
    for r in results:
        row = r["row"]
        line = f"{row.label}: load {r['load']}"
        if "trl" in r:
            o, t = summary(r["ours"]), summary(r["trl"])
            pairs = [a["step_s"] / b["step_s"] for a, b in zip(r["ours"], r["trl"])]
            line += (f"; promptr1/TRL: step {o['step_s'] / t['step_s']:.2f}x (per-pair ratios "
                     f"{min(pairs):.2f}-{max(pairs):.2f}), generation {o['generate_s'] / t['generate_s']:.2f}x, "
                     f"scoring {o['scoring_s'] / max(t['scoring_s'], 1e-9):.2f}x, "
                     f"update {o['update_s'] / t['update_s']:.2f}x")
        print(line)
    print(f"load average at end: {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
