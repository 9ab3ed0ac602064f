"""Configuration dataclasses for the trainer commands, loadable from YAML and overridable from argv.

One documented dataclass per command (design.md section 8): :class:`GRPOConfig` for
``promptr1 train``, :class:`SFTConfig` for ``promptr1 sft`` and :class:`EvalConfig` for
``promptr1 eval``/``chat``. Defaults marked *(ref)* come from the Prompt-R1 paper and its
official code; defaults marked *(quickstart)* are tuned so that ``promptr1 train`` with no
arguments learns visibly on a 2-core CPU in a few minutes.

>>> cfg = load_config(GRPOConfig, overrides=["--steps", "3", "--lr=2e-5"])
>>> cfg.steps, cfg.lr
(3, 2e-05)
>>> try:
...     load_config(GRPOConfig, overrides=["--stpes", "3"])
... except ConfigError as exc:
...     print(exc)
unknown option '--stpes' for GRPOConfig. Did you mean '--steps'? Run with --help to list the valid options.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "EvalConfig",
    "GRPOConfig",
    "SFTConfig",
    "config_help",
    "config_to_dict",
    "load_config",
    "parse_overrides",
]

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration key or value that the command does not accept."""


@dataclass
class GRPOConfig:
    """Everything ``promptr1 train`` needs. Every field is a ``--key value`` option."""

    # --- what to train, against what
    model: str = "smollm2"
    """Policy: ``smollm2`` (the offline SmolLM2-135M-Instruct), ``tiny`` (random test model), or an HF id/folder."""
    env_llm: str = "sim"
    """Environment LLM spec (``sim``, ``smollm2``, ``openai:MODEL``, ``hf:PATH``...)."""
    tasks: str = "synthetic"
    """Training tasks: ``synthetic`` (bundled) or a parquet/JSONL file."""
    eval_tasks: str = ""
    """Held-out tasks for the final evaluation; empty means the test split of ``tasks`` (synthetic only)."""
    max_turns: int = 3
    """Agent turns per episode (ref: 5; quickstart: 3, the synthetic tasks need at most two prompts)."""
    max_response_chars: int = 2048
    """Env-LLM reply truncation in characters (ref: 2048)."""
    reward_variant: str = "faithful"
    """Reward variant passed to the env (``faithful`` is the paper's)."""

    # --- the algorithm
    algo: str = "grpo"
    """Registered algorithm: grpo, drgrpo, rloo, reinforce, dapo, or one you registered."""
    plugins: str = ""
    """Comma-separated modules imported first (e.g. ones that call register_algorithm)."""
    steps: int = 20
    """Optimizer-side training steps (each: rollouts, then the update)."""
    batch_questions: int = 4
    """Questions sampled per step (per process under ``accelerate launch``)."""
    group_size: int = 4
    """Rollouts per question, the GRPO group G (ref: 5)."""
    max_new_tokens: int = 96
    """Token budget of one agent turn."""
    max_seq_len: int = 1024
    """Token budget of a whole episode (prompt, turns and replies)."""
    temperature: float = 1.0
    """Sampling temperature for rollouts (ref: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling for rollouts (ref: 1.0)."""
    update_epochs: int = 1
    """Passes over each rollout batch (ref: 1)."""
    minibatches: int = 1
    """Optimizer steps per epoch; the rollout batch is split into this many minibatches."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass (gradient accumulation inside a minibatch)."""
    lr: float = 2e-6
    """AdamW learning rate (ref: 1e-6 for 3B-7B agents; a 135M model tolerates more)."""
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "constant"
    """``constant``, ``linear`` or ``cosine`` (after warm-up)."""
    max_grad_norm: float = 1.0
    clip_eps: float = 0.2
    """PPO clip range (ref: 0.2)."""
    clip_eps_high: float = 0.0
    """Upper clip range for clip-higher (DAPO: 0.28); 0 means the same as ``clip_eps``."""
    kl_coef: float = 0.001
    """KL-to-reference coefficient (ref: 0.001); 0 skips the reference model entirely."""
    kl_estimator: str = "k3"
    """``k1`` or the low-variance ``k3`` (ref)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (ref: 0)."""
    loss_agg: str = ""
    """Override the algorithm's aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum."""
    recompute_old_logp: bool = True
    """Recompute old log-probs with a no-grad forward of the training model before the update."""

    # --- systems
    seed: int = 0
    deterministic: bool = False
    """Use deterministic torch algorithms (same seed, same metrics; slower on GPU)."""
    cpu: bool = False
    """Force the CPU even when an accelerator is present."""
    mixed_precision: str = "auto"
    """``no``, ``bf16``, ``fp16``, or ``auto`` (bf16 where the GPU supports it, else no)."""
    gradient_checkpointing: bool = False
    lora_r: int = 0
    """LoRA rank (0 disables LoRA; needs ``pip install peft``)."""
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    env_concurrency: int = 16
    """Env-LLM calls in flight at once."""

    # --- outputs
    output_dir: str = "runs/promptr1"
    save_every: int = 0
    """Write a checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    resume: str = ""
    """``auto`` (latest in output_dir), a checkpoint folder, or empty for a fresh run."""
    log_every: int = 1
    num_transcripts: int = 2
    """Full transcripts written to TensorBoard per step."""
    progress: bool = True
    """Show a console progress bar."""

    # --- warm start and final evaluation (the quickstart)
    sft_steps: int = 0
    """Supervised warm-start steps on generated demonstrations before RL (0: none)."""
    sft_lr: float = 5e-5
    sft_batch_size: int = 8
    eval_episodes: int = 0
    """After training, evaluate untrained vs trained on this many held-out episodes (0: skip)."""
    eval_warm_start: bool = True
    """Also evaluate the policy right after the SFT warm-start (separates SFT's gain from RL's)."""


@dataclass
class SFTConfig:
    """``promptr1 sft``: supervised warm-start on demonstrations of the turn protocol."""

    model: str = "smollm2"
    tasks: str = "synthetic"
    env_llm: str = "sim"
    """Env LLM that answers the demonstration prompts (its replies are context, not targets)."""
    max_turns: int = 3
    steps: int = 30
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_len: int = 1024
    seed: int = 0
    cpu: bool = False
    mixed_precision: str = "auto"
    output_dir: str = "runs/promptr1-sft"
    progress: bool = True


@dataclass
class EvalConfig:
    """``promptr1 eval`` and ``promptr1 chat``."""

    model: str = "smollm2"
    """A checkpoint folder (from ``promptr1 train``), an HF id/folder, ``smollm2`` or ``tiny``."""
    tasks: str = "synthetic"
    split: str = "test"
    env_llm: str = "sim"
    episodes: int = 64
    max_turns: int = 3
    max_new_tokens: int = 96
    max_seq_len: int = 1024
    temperature: float = 0.0
    """0 means greedy decoding."""
    batch_size: int = 32
    seed: int = 1234
    cpu: bool = False
    question: str = ""
    """For ``chat``: the question to ask."""


# ----------------------------------------------------------------------------- parsing


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type.

    >>> _coerce("3", int, "steps"), _coerce("no", bool, "cpu"), _coerce("1e-5", float, "lr")
    (3, False, 1e-05)
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        tp = args[0]
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on", "y"):
            return True
        if s in ("0", "false", "no", "off", "n"):
            return False
        raise ConfigError(f"option '--{key}' expects true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"option '--{key}' expects an integer, got {value!r}.")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option '--{key}' expects an integer, got {value!r}.") from None
        if f != int(f):
            raise ConfigError(f"option '--{key}' expects an integer, got {value!r}.")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option '--{key}' expects a number, got {value!r}.") from None
    if tp is str:
        return "" if value is None else str(value)
    return value


def _unknown_key_error(cls: type, key: str) -> ConfigError:
    names = [f.name for f in fields(cls)]
    hint = difflib.get_close_matches(key.replace("-", "_"), names, n=1)
    msg = f"unknown option '--{key}' for {cls.__name__}."
    if hint:
        msg += f" Did you mean '--{hint[0]}'?"
    msg += " Run with --help to list the valid options."
    return ConfigError(msg)


def parse_overrides(cls: type, argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``--key value`` / ``--key=value`` / bare ``--flag`` (booleans) into typed values.

    >>> parse_overrides(GRPOConfig, ["--cpu", "--group-size", "8"])
    {'cpu': True, 'group_size': 8}
    """
    types_ = _field_types(cls)
    out: dict[str, Any] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ConfigError(
                f"expected an option like '--key value', got {tok!r}. Options are written --name value."
            )
        body = tok[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        else:
            key = body
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            name = key.replace("-", "_")
            if types_.get(name) is bool and (nxt is None or nxt.startswith("--")):
                value, i = "true", i + 1
            elif nxt is None:
                raise ConfigError(f"option '--{key}' needs a value, e.g. '--{key} VALUE'.")
            else:
                value, i = nxt, i + 2
        name = key.replace("-", "_")
        if name not in types_:
            raise _unknown_key_error(cls, key)
        out[name] = _coerce(value, types_[name], name)
    return out


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> C:
    """Build ``cls`` from defaults, then a YAML file (if given), then ``--key value`` overrides."""
    values: dict[str, Any] = {}
    types_ = _field_types(cls)
    if path:
        import yaml

        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of option: value, got {type(data).__name__}.")
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in types_:
                err = _unknown_key_error(cls, str(key))
                raise ConfigError(f"in {str(path)!r}: {err}")
            values[name] = _coerce(value, types_[name], name)
    values.update(parse_overrides(cls, overrides))
    return cls(**values)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict (for YAML dumps and TensorBoard hparams)."""
    return dataclasses.asdict(cfg)


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after a field) read from the source."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name):
            if isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
                if isinstance(b.value.value, str):
                    docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def config_help(cls: type) -> str:
    """A table of options, defaults and their documentation."""
    docs = _field_docs(cls)
    lines = [f"options ({cls.__name__}; also accepted as keys of a YAML file given with --config FILE):"]
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        line = f"  --{f.name.replace('_', '-'):<24} {default!r:<18} {docs.get(f.name, '')}"
        lines.append(line.rstrip())
    return "\n".join(lines)
