"""Train a Prompt-R1 agent with TRL's GRPOTrainer: PromptCollabEnv episodes through our rollout_func.

CPU smoke test (the tiny random test model against the simulated expert, a minute or so):

    python examples/trl_grpo.py --max-steps 2

One GPU, a real agent, vLLM colocated with training, a real large LLM behind the env:

    python examples/trl_grpo.py --model HuggingFaceTB/SmolLM2-135M-Instruct --env-llm openai:gpt-4o-mini \
        --tasks hotpot.parquet --use-vllm --bf16 --max-steps 200

Several GPUs: ``accelerate launch --config_file CONFIG examples/trl_grpo.py ...`` (see docs/integrations-trl.md).
The GPU and vLLM paths were written against TRL 1.16's sources but not run on this project's CI machines.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import promptr1.testing  # noqa: E402,F401  (registers the test doubles: the `tiny` model, `echo`/`scripted` env LLMs)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL; we know


#: What the final save writes (besides tokenizer files): an earlier run's are never overwritten unasked.
SAVED_MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json", "training_args.bin")


def load_settings(name: str | None, *, env_llm: str | None = None) -> Any:
    """The promptr1 settings whose env-LLM block this run uses: a bundled config or a YAML file (None: the
    defaults), with ``env_llm`` over its own when given."""
    import dataclasses
    import pathlib

    from promptr1.agents.config import GRPOConfig
    from promptr1.config import bundled_config, load_config

    cfg = GRPOConfig()
    if name:
        path = name if pathlib.Path(name).is_file() else bundled_config(name)
        if path is None:
            raise FileNotFoundError(f"--settings {name!r}: no such file and no bundled promptr1 config of that name.")
        cfg = load_config(GRPOConfig, path)
    return dataclasses.replace(cfg, env_llm=env_llm) if env_llm else cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny", help="agent model: HF id or folder, or a promptr1 name (tiny, smollm2)")
    p.add_argument("--env-llm", default=None,
                   help="the large LLM: sim, openai:MODEL, hf:ID, smollm2, ... (default: the settings', sim)")
    p.add_argument("--settings", default=None,
                   help="a promptr1 config (bundled name such as 'paper', or a YAML file) whose env-LLM block is used: "
                        "env_llm, env sampling and system prompt, limits (env_rpm, env_max_concurrency ...), price, "
                        "budget (max_calls, max_cost) and cache")
    p.add_argument("--tasks", default="synthetic", help="synthetic, a .parquet (official schema) or .jsonl file")
    p.add_argument("--questions", type=int, default=0, help="use only the first N tasks (0: all)")
    p.add_argument("--max-turns", type=int, default=5, help="agent turns per episode (ref: 5)")
    p.add_argument("--framing", default="ours", choices=["ours", "reference"], help="agent-side framing of the env")
    p.add_argument("--reward-variant", default="faithful", help="faithful (ref) or answer_gated")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per agent turn (ref: 1024)")
    p.add_argument("--max-seq-len", type=int, default=2048, help="tokens per episode, prompt included (ref: 8192)")
    p.add_argument("--num-generations", type=int, default=4, help="episodes per question (ref: 5)")
    p.add_argument("--batch-size", type=int, default=4, help="episodes per device per step")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps-per-generation", type=int, default=None,
                   help="optimizer micro-steps per rollout batch (ref: 10 minibatches a rollout batch)")
    p.add_argument("--max-steps", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-6, help="learning rate (ref: 1e-6)")
    p.add_argument("--beta", type=float, default=0.001, help="KL coefficient (ref: 0.001)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (ref: 1.0)")
    p.add_argument("--loss-type", default="dapo", help="TRL loss_type; dapo is token-mean (ref)")
    p.add_argument("--epsilon", type=float, default=0.2, help="PPO clip (ref: 0.2)")
    p.add_argument("--delta", type=float, default=3.0, help="upper bound on the ratio: the dual clip (ref: c=3)")
    p.add_argument("--use-vllm", action="store_true", help="generate agent turns with vLLM")
    p.add_argument("--vllm-mode", default="colocate", choices=["colocate", "server"])
    p.add_argument("--vllm-server-base-url", default=None, help="server mode: URL of `trl vllm-serve`")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--output-dir", default="runs/trl-grpo",
                   help="the trained model and tokenizer are saved here at the end (and checkpoints, see --save-steps)")
    p.add_argument("--save-steps", type=int, default=0,
                   help="also write a checkpoint every N steps (0: only the final model)")
    p.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (the newest)")
    p.add_argument("--resume", default="", help="'auto': continue from the newest checkpoint in --output-dir; or a "
                   "checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --output-dir that holds an earlier run")
    p.add_argument("--report-to", default="none", help="none, tensorboard, wandb, ...")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train; return the last step's logged metrics."""
    import torch
    from promptr1.agents.models import resolve_model_path
    from promptr1.envs.tasks import load_tasks
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from promptr1.integrations.trl import env_reward, make_rollout_func, tasks_to_dataset
    from promptr1.llm_backends import from_settings

    a = parse_args(argv)
    from promptr1.agents.checkpoint import claim_output_dir

    # never write over an earlier run: its checkpoints and its saved model
    claim_output_dir(a.output_dir, resume=a.resume, overwrite=a.overwrite, names=SAVED_MODEL_FILES,
                     command="examples/trl_grpo.py")
    tasks = list(load_tasks(a.tasks, split="train"))
    if a.questions > 0:
        tasks = tasks[: a.questions]

    path = resolve_model_path(a.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    args = GRPOConfig(
        # TRL loads the model from its path (so that DeepSpeed ZeRO-3 can shard it while loading)
        model_init_kwargs={"dtype": "bfloat16" if a.bf16 else "float32"},
        output_dir=a.output_dir, max_steps=a.max_steps, learning_rate=a.lr, beta=a.beta, loss_type=a.loss_type,
        epsilon=a.epsilon, delta=a.delta,
        per_device_train_batch_size=a.batch_size, gradient_accumulation_steps=a.grad_accum,
        steps_per_generation=a.steps_per_generation,
        num_generations=a.num_generations, temperature=a.temperature, max_completion_length=a.max_new_tokens,
        bf16=a.bf16, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=a.gradient_checkpointing,
        use_vllm=a.use_vllm, vllm_mode=a.vllm_mode, vllm_server_base_url=a.vllm_server_base_url,
        vllm_gpu_memory_utilization=a.vllm_gpu_memory_utilization, vllm_max_model_length=a.max_seq_len,
        mask_truncated_completions=False, logging_steps=1, report_to=a.report_to,
        save_strategy="steps" if a.save_steps > 0 else "no", save_steps=max(a.save_steps, 1),
        save_total_limit=a.save_total_limit,
        seed=a.seed, disable_tqdm=True,
    )
    # The env LLM as every promptr1 command builds it: the settings' block (limits, price, budget, cache)
    settings = load_settings(a.settings, env_llm=a.env_llm)
    backend, budget = from_settings(settings)
    # the same env settings for the dataset's prompts and the rollout's envs
    env_kwargs = {"max_turns": a.max_turns, "framing": a.framing, "reward_variant": a.reward_variant,
                  "sampling": settings.env_sampling(), "env_system_prompt": settings.env_system_prompt,
                  **settings.agent_prompt_kwargs(),  # the agent's system text and tool, when the settings give them
                  **settings.model_kwargs()}  # several env LLMs and the cost term, when the settings use them
    trainer = GRPOTrainer(
        model=str(path), processing_class=tokenizer, args=args,
        train_dataset=tasks_to_dataset(tasks, env_kwargs=env_kwargs),
        reward_funcs=[env_reward],
        rollout_func=make_rollout_func(tasks, env_llm=backend, env_kwargs=env_kwargs,
                                       max_new_tokens=a.max_new_tokens, max_seq_len=a.max_seq_len,
                                       truncated_reward=settings.truncated_reward),
    )
    resume: bool | str | None = None
    if a.resume:
        resume = True if a.resume == "auto" else a.resume
    trainer.train(resume_from_checkpoint=resume)
    # The trained model and its tokenizer, loadable by from_pretrained and by `promptr1 eval agent:OUTPUT_DIR`
    trainer.save_model(a.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(a.output_dir)
        print(f"saved the trained model and tokenizer to {a.output_dir}")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    last = logs[-1] if logs else {}
    if trainer.accelerator.is_main_process:
        keys = ("rewards/env_reward/mean", "reward/format", "reward/answer", "env_llm/error_rate", "rollout/turns_mean")
        print("step", last.get("step"), " ".join(f"{k}={last[k]:.3f}" for k in keys if k in last))
        print(f"env LLM: {budget.calls} uncached calls, ${budget.cost:.4f}"
              + (f" (budget: {budget.stop_reason})" if budget.stop_reason else ""))
    backend.close()
    return last


if __name__ == "__main__":
    main()
