"""The paper's recipe as bundled configs (``paper``, ``paper-1gpu``, ``verl-paper``, the verl agent loops) and as
a TRL launch line (docs/training.md): each parses and carries the paper's numbers (docs/architecture.md, training defaults)."""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest
from conftest import load_script
from promptr1.agents.config import GRPOConfig

from promptr1.core.settings import bundled_config, load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "promptr1" / "configs"


def paper_numbers(cfg: GRPOConfig) -> None:
    loss = cfg.loss_config()
    assert cfg.model == "Qwen/Qwen3-4B"
    assert cfg.group_size == 5 and cfg.lr == 1e-6 and cfg.minibatches == 10 and cfg.update_epochs == 1
    assert (loss.kl_coef, loss.kl_estimator, loss.dual_clip_c, loss.clip_eps, loss.loss_agg) == \
        (0.001, "k3", 3.0, 0.2, "token-mean")
    assert (cfg.max_turns, cfg.max_new_tokens, cfg.max_seq_len, cfg.max_response_chars) == (5, 1024, 8192, 2048)
    assert cfg.temperature == 1.0 and cfg.framing == "reference" and cfg.reward_variant == "faithful"
    assert cfg.eval_every == 10 and cfg.eval_before_train and cfg.eval_tasks


def test_paper_config_is_the_papers_recipe_on_8_gpus():
    cfg = load_config(GRPOConfig, bundled_config("paper"))
    paper_numbers(cfg)
    assert cfg.batch_questions * 8 == 128  # per process, 8 processes
    # 10 mini-batches of the 640 episodes: each process splits its 80 into 10 of 8, DDP averages: 64 a step
    assert cfg.batch_questions * cfg.group_size % cfg.minibatches == 0


def test_paper_1gpu_config_is_the_same_recipe_on_one_gpu():
    cfg = load_config(GRPOConfig, bundled_config("paper-1gpu"))
    paper_numbers(cfg)
    assert cfg.batch_questions == 32 and cfg.model_dtype == "bf16" and cfg.gradient_checkpointing


def test_paper_dry_run(capsys):
    from promptr1.commands.cli import main

    assert main(["train", "--config", "paper", "--dry-run", "--eval-limit", "64"]) == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.strip().startswith("per step"))
    assert "(80 episodes)" in line and line.split()[-4] == "400"  # 16 x 5 episodes x 5 calls, per process
    # the validation file is not here: --eval-limit stands for its size, and the report says so
    assert "validation sources not readable here (validation.parquet)" in text
    assert "per validation (64 episodes)" in text
    # epochs: 1 without the training file here: the report counts the config's steps and says so
    assert "training tasks not readable here (train.parquet): epochs=1 counted as --steps 200" in text


def test_every_bundled_config_parses():
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"quickstart", "paper", "paper-1gpu", "verl-paper", "verl-agent-loops"} <= set(names)
    for name in names:
        if not name.startswith("verl-"):
            load_config(GRPOConfig, bundled_config(name)).loss_config()


def test_verl_agent_loop_yaml():
    pytest.importorskip("omegaconf")
    from omegaconf import OmegaConf

    (entry,) = OmegaConf.load(CONFIGS / "verl-agent-loops.yaml")
    assert entry.name == "promptr1" and entry._target_ == "promptr1.integrations.verl.PromptR1AgentLoop"
    assert OmegaConf.to_container(entry, resolve=True)["settings"] == "paper"  # the loop's episode settings


def test_verl_paper_yaml_composes_with_verls_trainer_config():
    pytest.importorskip("verl.trainer.config", reason="verl 0.9 is not installed")
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="verl-paper")
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-4B"
    assert cfg.data.train_batch_size == 128 and rollout.n == 5
    assert actor.optim.lr == 1e-6 and actor.use_kl_loss and actor.kl_loss_coef == 0.001
    assert actor.kl_loss_type == "low_var_kl" and actor.clip_ratio == 0.2 and actor.clip_ratio_c == 3.0
    assert actor.loss_agg_mode == "token-mean" and actor.ppo_epochs == 1
    assert cfg.data.train_batch_size // actor.ppo_mini_batch_size == 8  # the nearest whole split to the ref's 10
    assert rollout.prompt_length + rollout.response_length == rollout.max_model_len == 8192
    assert rollout.agent.default_agent_loop == "promptr1" and rollout.val_kwargs.temperature == 0
    assert algo.adv_estimator == "promptr1_grpo" and algo.norm_adv_by_std_in_grpo and not algo.use_kl_in_reward
    assert cfg.trainer.test_freq == 10 and cfg.trainer.val_before_train


def test_trl_launch_line_in_the_docs_carries_the_paper_numbers():
    text = (ROOT / "docs" / "training.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.DOTALL) if "examples/trl_grpo.py" in b)
    argv = shlex.split(block.replace("\\\n", " "))
    argv = argv[argv.index("examples/trl_grpo.py") + 1:]
    module = load_script("examples/trl_grpo.py")
    a = module.parse_args(argv)
    assert a.model == "Qwen/Qwen3-4B" and a.framing == "reference"
    assert (a.num_generations, a.lr, a.beta, a.epsilon, a.delta, a.loss_type, a.temperature) == \
        (5, 1e-6, 0.001, 0.2, 3.0, "dapo", 1.0)
    assert (a.max_turns, a.max_new_tokens, a.max_seq_len) == (5, 1024, 8192)
    assert 8 * a.batch_size * a.steps_per_generation == 128 * 5  # 8 processes: 640 episodes a generation batch
