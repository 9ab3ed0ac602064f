"""stable-baselines3 learns which prompting strategy to use, turn by turn (StrategyWrapper + PPO/A2C/DQN).

The agent picks one of five strategies per turn (direct, explain, decompose, verify, final) on the
bundled synthetic tasks (multi-hop questions and word problems) against the ``sim`` expert, which
answers only explicit one-fact or one-operation questions. No single fixed plan fits every question
(a 2-hop question needs two sub-questions before committing, a 3-step word problem three), so a
policy that reads the dialogue beats every fixed one.

    python examples/sb3_strategy_ppo.py                 # PPO, ~30 s on a laptop CPU
    python examples/sb3_strategy_ppo.py --algo dqn --steps 50000

It prints the mean reward on held-out episodes (``synthetic:test``) of: uniform random actions,
the best fixed strategy (``strategy s for k turns, then final``, best over s and k, chosen on the
evaluation episodes themselves), and the trained policy.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.strategy_wrapper import StrategyWrapper

#: Where SB3 writes TensorBoard logs: beside the GRPO trainer's ``runs/promptr1``.
DEFAULT_LOGDIR = "runs/sb3"

Policy = Callable[[np.ndarray, StrategyWrapper], int]


def make_env(split: str = "train", embedder: Any = "hashing", **env_kwargs: Any) -> StrategyWrapper:
    """The strategy-level env over ``synthetic:<split>`` with the ``sim`` expert (5 turns)."""
    return StrategyWrapper(PromptCollabEnv(task=f"synthetic:{split}", env_llm="sim", **env_kwargs), embedder=embedder)


def evaluate(policy: Policy, env: StrategyWrapper, episodes: int = 200) -> float:
    """Mean episode reward of ``policy`` on the env's first ``episodes`` tasks (each once, in order)."""
    n = min(episodes, len(env.env.tasks))
    total = 0.0
    for i in range(n):
        obs, _ = env.reset(options={"task_index": i})
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs, env))
            total += reward
            done = terminated or truncated
    return total / n


def random_policy(seed: int = 0) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda obs, env: int(rng.integers(env.action_space.n))


def fixed_policy(strategy: int, turns: int) -> Policy:
    """Strategy ``strategy`` on the first ``turns`` turns, then ``final``."""
    return lambda obs, env: strategy if env.turn < turns else env.strategy_names.index("final")


def best_fixed(env: StrategyWrapper, episodes: int = 200) -> tuple[float, str]:
    """The best ``fixed_policy`` on these episodes (also counting "always strategy s")."""
    best = (-np.inf, "")
    final = env.strategy_names.index("final")
    for s, k in itertools.product(range(env.action_space.n), range(env.max_turns + 1)):
        if s == final and k > 0:
            continue
        score = evaluate(fixed_policy(s, k), env, episodes)
        label = f"{env.strategy_names[s]} x{k} then final" if k < env.max_turns else f"always {env.strategy_names[s]}"
        best = max(best, (score, label))
    return best


def train(algo: str = "ppo", steps: int = 16_000, seed: int = 0, embedder: Any = "hashing",
          tensorboard_log: str | None = None, n_envs: int = 4) -> Any:
    """Train an SB3 model on the train split; returns the model."""
    import torch
    from stable_baselines3 import A2C, DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)  # a 2-layer MLP runs fastest on one thread
    venv = make_vec_env(lambda: make_env("train", embedder), n_envs=1 if algo == "dqn" else n_envs, seed=seed)
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


def run(algo: str = "ppo", steps: int = 16_000, seed: int = 0, episodes: int = 200, embedder: Any = "hashing",
        tensorboard_log: str | None = None) -> dict[str, Any]:
    """Train, then score random / best fixed / trained on ``episodes`` held-out episodes."""
    t0 = time.perf_counter()
    model = train(algo, steps, seed, embedder, tensorboard_log)
    train_s = time.perf_counter() - t0
    test = make_env("test", embedder)
    trained = evaluate(lambda obs, env: int(model.predict(obs, deterministic=True)[0]), test, episodes)
    fixed, fixed_label = best_fixed(test, episodes)
    rand = evaluate(random_policy(seed), test, episodes)
    return {"algo": algo, "steps": steps, "episodes": min(episodes, len(test.env.tasks)), "train_s": train_s,
            "random": rand, "best_fixed": fixed, "best_fixed_label": fixed_label, "trained": trained}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="ppo", choices=("ppo", "a2c", "dqn"))
    p.add_argument("--steps", type=int, default=16_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--embedder", default="hashing", help="hashing (fast), minilm or auto")
    p.add_argument("--logdir", default=DEFAULT_LOGDIR, help="TensorBoard folder ('' for none)")
    args = p.parse_args(argv)
    res = run(args.algo, args.steps, args.seed, args.episodes, args.embedder, args.logdir or None)
    print(f"{res['algo'].upper()} on the strategy wrapper, {res['steps']} steps in {res['train_s']:.0f}s; "
          f"mean reward on {res['episodes']} held-out episodes (synthetic:test, sim expert):")
    print(f"  uniform random      {res['random']:+.3f}")
    print(f"  best fixed strategy {res['best_fixed']:+.3f}  ({res['best_fixed_label']})")
    print(f"  trained {res['algo']:<11} {res['trained']:+.3f}")
    return res


if __name__ == "__main__":
    main()
