"""stable-baselines3 PPO writing agent turns one token at a time (TokenWrapper, the RL4LMs formulation).

Each action is one token from a small vocabulary (the tokens of the protocol tags and a few words,
in the tiny test model's tokenizer); a turn goes to the environment when the policy writes the
end-of-turn token or a closing tag. This is a research scaffold for small vocabularies: a few
hundred steps show the plumbing (and the TensorBoard curves) rather than a useful agent.

    python examples/sb3_token_ppo.py --steps 512 --logdir runs/sb3
    tensorboard --logdir runs        # beside the GRPO trainer's runs/promptr1/tensorboard
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.token_wrapper import TokenWrapper, load_tokenizer, vocab_from_texts

import promptr1.testing  # noqa: E402,F401  (registers the test doubles: the `tiny` model, `echo`/`scripted` env LLMs)

#: Where SB3 writes TensorBoard logs: beside the GRPO trainer's ``runs/promptr1``.
DEFAULT_LOGDIR = "runs/sb3"

#: Texts whose tokens make up the action vocabulary.
VOCAB_TEXTS = (
    "<think>I will ask.</think>",
    "<interaction_prompt>What is the capital of it?</interaction_prompt>",
    "<answer>I do not know</answer>",
    " Who born where country mayor founder 0 1 2 3 4 5 6 7 8 9 + - * /",
)


def make_env(split: str = "train", window: int = 32, max_turn_tokens: int = 24, max_turns: int = 2,
             tokenizer: Any = "tiny") -> TokenWrapper:
    """The token-level env over ``synthetic:<split>`` with the ``sim`` expert and a small vocabulary."""
    tok = load_tokenizer(tokenizer)
    inner = PromptCollabEnv(task=f"synthetic:{split}", env_llm="sim", max_turns=max_turns)
    return TokenWrapper(inner, tok, window=window, max_turn_tokens=max_turn_tokens,
                        vocab=vocab_from_texts(tok, VOCAB_TEXTS))


def run(steps: int = 512, seed: int = 0, logdir: str | None = DEFAULT_LOGDIR, n_envs: int = 2) -> Any:
    """Train PPO for ``steps`` tokens; TensorBoard logs go to ``logdir/token-ppo_N``."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    tok = load_tokenizer("tiny")  # load once, share across the sub-envs
    venv = make_vec_env(lambda: make_env("train", tokenizer=tok), n_envs=n_envs, seed=seed)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=2, learning_rate=3e-4, ent_coef=0.01,
                seed=seed, device="cpu", verbose=0, tensorboard_log=logdir)
    model.learn(total_timesteps=steps, tb_log_name="token-ppo")
    return model


def main(argv: list[str] | None = None) -> Any:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default=DEFAULT_LOGDIR, help="TensorBoard folder ('' for none)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    model = run(args.steps, args.seed, args.logdir or None)
    env = model.get_env()
    print(f"PPO on the token wrapper: {args.steps} token steps in {time.perf_counter() - t0:.0f}s; "
          f"vocabulary {env.action_space.n} tokens, observation {env.observation_space}; "
          f"TensorBoard: {model.logger.dir if args.logdir else '(off)'}")
    return model


if __name__ == "__main__":
    main()
