"""stable-baselines3 learns which prompting strategy to use, turn by turn (StrategyWrapper + PPO/A2C/DQN).

The agent picks one of five strategies per turn (direct, explain, decompose, verify, final) on the
bundled synthetic tasks (multi-hop questions and word problems) against the ``sim`` expert, which does
one thing per call (one fact or one arithmetic operation). ``decompose`` asks the next sub-question of a
hand-written splitter for our question templates (``envs/decompose.py``); the policy does not see the
splitter's state, so it has to learn from the question and the last reply how many sub-questions a
task needs before ``final``.

    python examples/sb3_strategy_ppo.py                     # PPO, 50k steps, seed 0 (~1.5 min on a laptop CPU)
    python examples/sb3_strategy_ppo.py --seeds 0 1 2       # three PPO seeds
    python examples/sb3_strategy_ppo.py --algo dqn --steps 50000

It prints, on held-out episodes (``synthetic:test``), the mean reward with a 95% bootstrap interval of:
uniform random actions; the best fixed strategy ("strategy s on the first k turns, then final", best
over s and k), **chosen on separate episodes of the training split**; the scripted rule "decompose until
the splitter's plan is done, then final" (it reads the plan's state, which the policy does not see);
and the trained policy, with its paired margin over the best fixed strategy (same episodes).
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.strategy_wrapper import StrategyWrapper

#: Where SB3 writes TensorBoard logs: beside the GRPO trainer's ``runs/promptr1``.
DEFAULT_LOGDIR = "runs/sb3"

Policy = Callable[[np.ndarray, StrategyWrapper], int]


def make_env(split: str = "train", embedder: Any = "hashing", observe_plan: bool = False,
             **env_kwargs: Any) -> StrategyWrapper:
    """The strategy-level env over ``synthetic:<split>`` with the ``sim`` expert (5 turns)."""
    return StrategyWrapper(PromptCollabEnv(task=f"synthetic:{split}", env_llm="sim", **env_kwargs), embedder=embedder,
                           observe_plan=observe_plan)


def episode_rewards(policy: Policy, env: StrategyWrapper, episodes: int = 200, start: int = 0) -> list[float]:
    """The reward of ``policy`` on tasks ``start .. start + episodes - 1`` of the env (each once, in order)."""
    out = []
    for i in range(start, min(start + episodes, len(env.env.tasks))):
        obs, _ = env.reset(options={"task_index": i})
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs, env))
            total += reward
            done = terminated or truncated
        out.append(total)
    return out


def evaluate(policy: Policy, env: StrategyWrapper, episodes: int = 200) -> float:
    """Mean episode reward of ``policy`` on the env's first ``episodes`` tasks."""
    return float(np.mean(episode_rewards(policy, env, episodes)))


def bootstrap(values: Sequence[float], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)`` with a 95% percentile-bootstrap interval over the episodes."""
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(x.mean()), float(lo), float(hi)


def random_policy(seed: int = 0) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda obs, env: int(rng.integers(env.action_space.n))


def fixed_policy(strategy: int, turns: int) -> Policy:
    """Strategy ``strategy`` on the first ``turns`` turns, then ``final``."""
    return lambda obs, env: strategy if env.turn < turns else env.strategy_names.index("final")


def scripted_policy(obs: np.ndarray, env: StrategyWrapper) -> int:
    """Decompose until the splitter's plan is done, then final (reads ``env.plan``: privileged)."""
    return env.strategy_names.index("final" if env.plan.done else "decompose")


def fixed_label(env: StrategyWrapper, s: int, k: int) -> str:
    return f"{env.strategy_names[s]} x{k} then final" if k < env.max_turns else f"always {env.strategy_names[s]}"


def best_fixed(env: StrategyWrapper, episodes: int = 200) -> tuple[float, str, tuple[int, int]]:
    """The best ``fixed_policy`` on these episodes (also counting "always strategy s"): score, label, (s, k)."""
    best: tuple[float, str, tuple[int, int]] = (-np.inf, "", (0, 0))
    final = env.strategy_names.index("final")
    for s, k in itertools.product(range(env.action_space.n), range(env.max_turns + 1)):
        if s == final and k > 0:
            continue
        score = evaluate(fixed_policy(s, k), env, episodes)
        if score > best[0]:
            best = (score, fixed_label(env, s, k), (s, k))
    return best


def train(algo: str = "ppo", steps: int = 16_000, seed: int = 0, embedder: Any = "hashing",
          tensorboard_log: str | None = None, n_envs: int = 4, observe_plan: bool = False) -> Any:
    """Train an SB3 model on the train split; returns the model."""
    import torch
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)  # a 2-layer MLP runs fastest on one thread
    venv = make_vec_env(lambda: make_env("train", embedder, observe_plan), n_envs=1 if algo == "dqn" else n_envs,
                        seed=seed)
    common = dict(seed=seed, device="cpu", verbose=0, tensorboard_log=tensorboard_log)
    if algo == "ppo":
        model = PPO("MlpPolicy", venv, n_steps=128, batch_size=128, n_epochs=4, learning_rate=1e-3,
                    ent_coef=0.01, **common)
    elif algo == "a2c":
        model = A2C("MlpPolicy", venv, n_steps=8, learning_rate=1e-3, ent_coef=0.01, **common)
    elif algo == "dqn":
        model = DQN("MlpPolicy", venv, learning_rate=5e-4, buffer_size=50_000, learning_starts=1000, batch_size=64,
                    exploration_fraction=0.2, exploration_final_eps=0.02, target_update_interval=1000, train_freq=4,
                    **common)
    else:
        raise ValueError(f"algo must be 'ppo', 'a2c' or 'dqn', got {algo!r}.")
    model.learn(total_timesteps=steps, tb_log_name=f"strategy-{algo}")
    return model


def run(algo: str = "ppo", steps: int = 50_000, seeds: Sequence[int] = (0,), episodes: int = 200,
        embedder: Any = "hashing", tensorboard_log: str | None = None, select_episodes: int = 200,
        observe_plan: bool = False) -> dict[str, Any]:
    """Train one model per seed, then score every policy on ``episodes`` held-out episodes.

    The best fixed strategy is chosen on the first ``select_episodes`` episodes of the training split,
    never on the evaluation episodes."""
    select = make_env("train", embedder, observe_plan)
    fixed_on_train, label, (s, k) = best_fixed(select, select_episodes)
    test = make_env("test", embedder, observe_plan)
    n = min(episodes, len(test.env.tasks))
    rewards = {"random": episode_rewards(random_policy(0), test, n), "best_fixed": episode_rewards(fixed_policy(s, k), test, n),
               "scripted": episode_rewards(scripted_policy, test, n)}
    train_s = []
    for seed in seeds:
        t0 = time.perf_counter()
        model = train(algo, steps, seed, embedder, tensorboard_log, observe_plan=observe_plan)
        train_s.append(time.perf_counter() - t0)
        rewards[f"trained_{seed}"] = episode_rewards(lambda obs, env: int(model.predict(obs, deterministic=True)[0]),
                                                     test, n)
    # what choosing on the evaluation episodes themselves would have picked (for reference only)
    fixed_on_test, label_on_test, _ = best_fixed(test, n)
    res: dict[str, Any] = {
        "algo": algo, "steps": steps, "seeds": list(seeds), "episodes": n, "select_episodes": select_episodes,
        "observe_plan": observe_plan, "train_s": train_s, "best_fixed_label": label,
        "best_fixed_on_selection": fixed_on_train, "best_fixed_on_test_label": label_on_test,
        "best_fixed_on_test": fixed_on_test, "rewards": rewards,
        "ci": {key: bootstrap(v) for key, v in rewards.items()},
        "margin": {seed: bootstrap(np.subtract(rewards[f"trained_{seed}"], rewards["best_fixed"])) for seed in seeds},
    }
    res["random"], res["best_fixed"], res["scripted"] = (res["ci"][k][0] for k in ("random", "best_fixed", "scripted"))
    res["trained"] = float(np.mean([res["ci"][f"trained_{seed}"][0] for seed in seeds]))
    return res


def format_table(res: dict[str, Any], command: str = "") -> str:
    f = (lambda c: f"{c[0]:+.3f} [{c[1]:+.3f}, {c[2]:+.3f}]")
    rows = [f"{res['algo'].upper()} on the strategy wrapper ({'plan state observed' if res['observe_plan'] else 'no plan state in the observation'}), "
            f"{res['steps']} steps; {res['episodes']} held-out episodes (synthetic:test, sim expert); mean reward "
            "[95% bootstrap interval]:", "",
            "| policy | mean reward | margin over best fixed (paired) |", "|---|---|---|",
            f"| uniform random | {f(res['ci']['random'])} | |",
            f"| best fixed strategy, chosen on {res['select_episodes']} training-split episodes "
            f"(`{res['best_fixed_label']}`) | {f(res['ci']['best_fixed'])} | |"]
    for seed, t in zip(res["seeds"], res["train_s"]):
        rows.append(f"| {res['algo'].upper()}, seed {seed} ({t:.0f} s training) | {f(res['ci'][f'trained_{seed}'])} | "
                    f"{f(res['margin'][seed])} |")
    rows.append(f"| scripted: decompose until the plan is done, then final (reads the plan's state) | "
                f"{f(res['ci']['scripted'])} | |")
    rows += ["", f"(Chosen on the evaluation episodes themselves, the best fixed strategy would be "
                 f"`{res['best_fixed_on_test_label']}` at {res['best_fixed_on_test']:+.3f}.)"]
    if command:
        rows.append(f"command: `{command}`")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="ppo", choices=("ppo", "a2c", "dqn"))
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--select-episodes", type=int, default=200, help="training-split episodes that pick the best fixed strategy")
    p.add_argument("--embedder", default="hashing", help="hashing (fast), minilm or auto")
    p.add_argument("--observe-plan", action="store_true", help="also observe the splitter's next sub-question (one-bit task)")
    p.add_argument("--logdir", default=DEFAULT_LOGDIR, help="TensorBoard folder ('' for none)")
    args = p.parse_args(argv)
    res = run(args.algo, args.steps, args.seeds, args.episodes, args.embedder, args.logdir or None,
              args.select_episodes, args.observe_plan)
    print(format_table(res, "python examples/sb3_strategy_ppo.py" + (" " + shlex.join(argv) if argv else "")))
    return res


if __name__ == "__main__":
    main()
