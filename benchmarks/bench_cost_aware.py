"""An agent that chooses which large LLM to pay for: trained at several cost weights, against fixed policies.

The env (docs/cost-aware.md) holds two simulated experts: ``cheap`` (``sim``: one fact or one arithmetic operation
a call) and ``strong`` (``sim-strong``: also a whole composite question in one call), priced per 1,000 tokens so
that one strong call costs more than the two cheap calls of a two-step question and less than the three of a
three-step one (each cheap call re-sends the conversation so far).
The reward is ``cost_aware``: the reference's total minus ``cost_weight x (dollars / one strong call's dollars)``.

The agent is a stable-baselines3 PPO policy over the strategy-level view of the env (``StrategyWrapper``): each turn
it picks ``decompose`` (the next sub-question of a text-only splitter, to ``cheap``), ``strong`` (the whole question
to ``strong``) or ``final`` (answer from the last reply). It sees the question's and the last reply's embeddings,
the turn and its previous action, not the splitter's plan. One policy is trained per cost weight, on the training
split; all policies are scored on the same held-out episodes (``synthetic:test``), against:

* ``always cheap``: ``decompose`` k times, then ``final`` (k picked on training episodes, at each weight);
* ``always strong``: ``strong`` once, then ``final``;
* ``router``: a scripted rule that counts the steps a question needs from its text (relation words, or the word
  problem's operations) and sends it to whichever option scored best for that step count on training episodes at
  this weight: decomposition played to the end of the splitter's plan (it reads the plan's state, which the plain
  policy does not see), or one strong call.

Two policies are trained per weight: one that sees only the text (as above), and one that also sees the splitter's
plan state (``observe_plan``), the router's information.

    python benchmarks/bench_cost_aware.py                       # 3 weights, 30k PPO steps each, 200 episodes
    python benchmarks/bench_cost_aware.py --weights 0 1 --steps 5000 --episodes 50

It prints a table per weight (mean reward and dollars per episode with 95% bootstrap intervals, calls per model,
the trained policy's paired reward difference with each fixed policy) and writes a reward-vs-dollars PNG.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.decompose import parse_word_problem
from promptr1.envs.strategy_wrapper import StrategyWrapper
from promptr1.envs.synthetic.world import RELATIONS

#: USD per 1,000 input / output tokens (the sim experts count words as tokens).
PRICES = {"cheap": (0.00015, 0.0006), "strong": (0.0004, 0.0016)}
STRATEGIES = ("decompose", "final")
TEMPLATES = {"strong": "[strong] {question}"}
DEFAULT_WEIGHTS = (0.0, 0.25, 1.0)

Policy = Callable[[np.ndarray, StrategyWrapper], int]


def make_env(split: str, weight: float, reference_usd: float, observe_plan: bool = False) -> StrategyWrapper:
    env = PromptCollabEnv(task=f"synthetic:{split}", env_llm={"cheap": "sim", "strong": "sim-strong"},
                          model_prices=PRICES, reward_variant="cost_aware", cost_weight=weight,
                          cost_reference_usd=reference_usd)
    return StrategyWrapper(env, strategies=list(STRATEGIES), extra_templates=TEMPLATES, embedder="hashing",
                           observe_plan=observe_plan)


def play(policy: Policy, env: StrategyWrapper, indices: Sequence[int]) -> list[dict[str, Any]]:
    """One episode per task index: reward, dollars and calls per model."""
    out = []
    for i in indices:
        obs, _ = env.reset(options={"task_index": int(i)})
        done, total, info = False, 0.0, {}
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs, env))
            total += reward
            done = terminated or truncated
        ep = info.get("episode", {})
        out.append({"reward": total, "usd": float(ep.get("env_llm_cost_usd", 0.0)),
                    "calls": dict(ep.get("calls_by_model", {}))})
    return out


def steps_needed(question: str) -> int:
    """How many one-step calls a question needs, read from its text: a word problem's operations, else the
    relation words it names."""
    parsed = parse_word_problem(question)
    if parsed is not None and parsed[1]:
        return len(parsed[1])
    return max(1, sum(len(re.findall(r.keywords, question, re.IGNORECASE)) for r in RELATIONS.values()))


def cheap_policy(k: int) -> Policy:
    return lambda obs, env: env.strategy_names.index("decompose" if env.turn < k else "final")


def strong_policy(obs: np.ndarray, env: StrategyWrapper) -> int:
    return env.strategy_names.index("strong" if env.turn == 0 else "final")


def plan_policy(obs: np.ndarray, env: StrategyWrapper) -> int:
    """Decompose until the splitter's plan is done, then final."""
    return env.strategy_names.index("final" if env.plan.done else "decompose")


def router(table: dict[int, str]) -> Policy:
    """Per step count: ``plan`` (decompose to the end of the plan, cheap) or ``strong``."""
    def policy(obs: np.ndarray, env: StrategyWrapper) -> int:
        choice = table.get(steps_needed(env.env.task.question), "plan")
        return (plan_policy if choice == "plan" else strong_policy)(obs, env)
    return policy


def fit_router(env: StrategyWrapper, indices: Sequence[int]) -> dict[int, str]:
    """The better option per step count on these (training) episodes."""
    by: dict[int, dict[str, list[float]]] = collections.defaultdict(lambda: {"plan": [], "strong": []})
    for name, pol in (("plan", plan_policy), ("strong", strong_policy)):
        for i, rec in zip(indices, play(pol, env, indices)):
            by[steps_needed(env.env.tasks[int(i)].question)][name].append(rec["reward"])
    return {n: max(opts, key=lambda k: np.mean(opts[k])) for n, opts in by.items()}


def bootstrap(values: Sequence[float], n_boot: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(x.mean()), float(lo), float(hi)


def train(weight: float, reference_usd: float, steps: int, seed: int, observe_plan: bool = False) -> Any:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    venv = make_vec_env(lambda: make_env("train", weight, reference_usd, observe_plan), n_envs=4, seed=seed)
    model = PPO("MlpPolicy", venv, n_steps=128, batch_size=128, n_epochs=4, learning_rate=1e-3, ent_coef=0.01,
                seed=seed, device="cpu", verbose=0)
    return model.learn(total_timesteps=steps)


def reference_cost(episodes: int = 50) -> float:
    """The mean dollars of one strong call on training questions (the cost unit of the reward)."""
    env = make_env("train", 0.0, 1.0)
    recs = play(strong_policy, env, range(episodes))
    return float(np.mean([r["usd"] for r in recs]))


def run(weights: Sequence[float], steps: int, episodes: int, select: int, seed: int) -> dict[str, Any]:
    ref = reference_cost()
    results: dict[str, Any] = {"reference_usd": ref, "prices": PRICES, "weights": {}}
    for w in weights:
        t0 = time.perf_counter()
        train_env, test_env = make_env("train", w, ref), make_env("test", w, ref)
        pick = range(select)
        best_k = max(range(1, test_env.max_turns), key=lambda k: np.mean([r["reward"] for r in
                                                                     play(cheap_policy(k), train_env, pick)]))
        table = fit_router(train_env, pick)
        test = range(min(episodes, len(test_env.env.tasks)))
        policies = {f"always cheap (decompose x{best_k})": cheap_policy(best_k), "always strong": strong_policy,
                    "router (scripted, reads the plan)": router(table)}
        recs = {name: play(pol, test_env, test) for name, pol in policies.items()}
        for label, sees_plan in (("trained (PPO)", False), ("trained (PPO, sees the plan)", True)):
            model = train(w, ref, steps, seed, observe_plan=sees_plan)
            recs[label] = play(lambda obs, env, m=model: int(m.predict(obs, deterministic=True)[0]),
                               make_env("test", w, ref, observe_plan=sees_plan), test)
        rows = {}
        fixed = [n for n in recs if not n.startswith("trained")]
        for name, rs in recs.items():
            rew = [r["reward"] for r in rs]
            usd = [r["usd"] for r in rs]
            calls = collections.Counter()
            for r in rs:
                calls.update(r["calls"])
            rows[name] = {"reward": bootstrap(rew), "usd": bootstrap(usd),
                          "calls": {k: v / len(rs) for k, v in sorted(calls.items())}}
        for name in [n for n in recs if n.startswith("trained")]:  # paired: the same held-out episodes
            mine = np.array([r["reward"] for r in recs[name]])
            rows[name]["paired"] = {f: bootstrap(mine - np.array([r["reward"] for r in recs[f]]), seed=1)
                                    for f in fixed}
        results["weights"][str(w)] = {"rows": rows, "router": {str(k): v for k, v in sorted(table.items())},
                                      "seconds": time.perf_counter() - t0}
        print_table(w, rows, ref, time.perf_counter() - t0)
    return results


def print_table(weight: float, rows: dict[str, Any], ref: float, seconds: float) -> None:
    fixed = [n for n in rows if not n.startswith("trained")]
    print(f"\ncost weight {weight:g} (cost unit: one strong call, ${ref:.6f}); {seconds:.0f} s")
    print("| policy | reward [95% CI] | $ / episode (x1e-6) | calls cheap / strong | "
          + " | ".join(f"minus {f.split(' (')[0]} [95% CI]" for f in fixed) + " |")
    print("|---|---|---|---|" + "---|" * len(fixed))
    for name, r in rows.items():
        m, lo, hi = r["reward"]
        calls = f"{r['calls'].get('cheap', 0):.2f} / {r['calls'].get('strong', 0):.2f}"
        paired = [("{:+.3f} [{:+.3f}, {:+.3f}]".format(*r["paired"][f]) if "paired" in r else "") for f in fixed]
        print(f"| {name} | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['usd'][0] * 1e6:.1f} | {calls} | "
              + " | ".join(paired) + " |")
    sys.stdout.flush()


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = list(results["weights"])
    fig, axes = plt.subplots(1, len(weights), figsize=(4.2 * len(weights), 3.8), squeeze=False)
    markers = {"always cheap": "s", "always strong": "^", "router": "D", "trained (PPO, sees": "P", "trained": "o"}
    for ax, w in zip(axes[0], weights):
        for name, r in results["weights"][w]["rows"].items():
            m = next(v for k, v in markers.items() if name.startswith(k))
            ax.errorbar(r["usd"][0] * 1e6, r["reward"][0], yerr=[[r["reward"][0] - r["reward"][1]],
                        [r["reward"][2] - r["reward"][0]]], fmt=m, capsize=3, label=name)
        ax.set_title(f"cost weight {float(w):g}")
        ax.set_xlabel("dollars per episode (x1e-6)")
        ax.set_ylabel("reward (cost-aware)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=float, nargs="+", default=list(DEFAULT_WEIGHTS))
    p.add_argument("--steps", type=int, default=30_000, help="PPO steps per weight")
    p.add_argument("--episodes", type=int, default=200, help="held-out episodes")
    p.add_argument("--select", type=int, default=200, help="training episodes that pick k and fit the router")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_cost_aware", help="folder for results.json and the PNG")
    a = p.parse_args(argv)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(a.weights, a.steps, a.episodes, a.select, a.seed)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "reward_vs_dollars.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'reward_vs_dollars.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
