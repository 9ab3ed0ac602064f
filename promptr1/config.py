"""Settings: one documented dataclass per command, loadable from YAML and overridable from argv.

Every setting is declared once, under one name, with its default and the default's source ("ref" =
the Prompt-R1 paper and its official code). :class:`RunSettings` holds the settings that training,
the warm start and evaluation share; each command's config subclasses it and adds its own
(:class:`promptr1.agents.config.GRPOConfig`, :class:`promptr1.agents.config.SFTConfig`,
:class:`promptr1.evaluation.config.EvalConfig`). A setting whose default depends on the chosen
algorithm is ``None`` until the user gives it, so an explicit value always wins.

Values come from the field defaults, then a YAML file, then ``--key value`` options; list settings
take several values (``--tasks a.parquet b.parquet``) or a YAML list.

>>> cfg = load_config(RunSettings, overrides=["--max-turns", "3", "--tasks", "a.jsonl", "b.jsonl"])
>>> cfg.max_turns, cfg.tasks
(3, ['a.jsonl', 'b.jsonl'])
>>> try:
...     load_config(RunSettings, overrides=["--max-trns", "3"])
... except ConfigError as exc:
...     print(exc)
unknown option '--max-trns' for RunSettings. Did you mean '--max-turns'? Run with --help to list the valid options.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "RunSettings",
    "bundled_config",
    "parse_command",
    "config_help",
    "command_help",
    "help_problems",
    "ignored_settings",
    "plain_text",
    "config_to_dict",
    "load_config",
    "parse_overrides",
    "run_command",
]

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration key or value that the command does not accept."""


#: The values of ``cache_mode``.
CACHE_MODES = ("replay-or-record", "replay", "record", "off")


@dataclass
class BackendSettings:
    """The env LLM of a run and everything around it: sampling, system prompt, client limits, price, budget and
    cache. One block, read by every command, the TRL example and the verl agent loop;
    :func:`promptr1.llm_backends.from_settings` turns it into the backend a run uses."""

    # --- the env LLM
    env_llm: str = "sim"
    """Environment LLM spec (``sim``, ``smollm2``, ``openai:MODEL``, ``hf:PATH``...)."""
    env_temperature: float | None = 0.0
    """Env-LLM sampling temperature (0: greedy, so that replies are reproducible); none (YAML ``null``,
    ``--env-temperature none``) sends no temperature, so the server's default applies (ref: none is sent)."""
    env_max_tokens: int = 512
    """Env-LLM reply budget in tokens (0: no limit, as in the reference)."""
    env_system_prompt: str | None = "auto"
    """The env LLM's system message: ``auto`` (the backend's preferred one, else ours), a text, or none (YAML
    ``null``, or ``--env-system-prompt none``) for no system message."""
    env_max_concurrency: int | None = None
    """Env-LLM requests in flight at once (backends that take ``max_concurrency``: ``openai``); none: theirs."""
    env_rpm: float | None = None
    """Env-LLM requests per minute (backends that take ``rpm``: ``openai``); none: no limit."""
    env_tpm: float | None = None
    """Env-LLM tokens per minute (backends that take ``tpm``: ``openai``); none: no limit."""
    env_price_per_1k: list[float] = None  # type: ignore[assignment]
    """Two numbers, USD per 1,000 input and per 1,000 output tokens (backends that take ``price_per_1k``:
    ``openai``): the cost that ``max_cost`` and ``--dry-run`` count."""

    # --- budget and cache
    max_calls: int | None = None
    """Stop cleanly once this many uncached env-LLM calls were made (none: no limit): ``train`` finishes the step,
    writes a checkpoint and exits 3 (``--resume auto`` continues with a fresh budget); ``eval`` keeps its partial
    results and exits 3 (the same command resumes). Refused calls flag their episodes, which are dropped."""
    max_cost: float | None = None
    """Same, once the env LLM's cost reaches this many USD (the cost comes from a price: ``env_price_per_1k``, or
    the backend's own price table)."""
    cache: str | None = None
    """Record/replay cache file for env-LLM calls (SQLite); cached replies are free and not counted."""
    cache_mode: str = "replay-or-record"
    """``replay-or-record``, ``replay`` (offline: a miss is an env error), ``record`` or ``off``."""

    # --- several env LLMs (opt-in; docs/cost-aware.md)
    env_models: list[str] = None  # type: ignore[assignment]
    """``NAME=SPEC`` entries (e.g. ``cheap=sim strong=sim-strong``): several env LLMs in one env, the agent naming one
    per call (``[strong] ...``, or ``"model"`` in a JSON call); empty: the one ``env_llm``."""
    env_model_prices: list[str] = None  # type: ignore[assignment]
    """``NAME=IN:OUT`` entries: a model's USD per 1,000 input and output tokens (a model without one: its backend's own
    cost)."""
    env_default_model: str = ""
    """The model a call that names none goes to (empty: the first of ``env_models``)."""

    def __post_init__(self) -> None:
        """Reject budget, cache and limit settings no run can use, when the settings are made."""
        if self.env_price_per_1k is None:
            self.env_price_per_1k = []
        self.env_models = list(self.env_models or [])
        self.env_model_prices = list(self.env_model_prices or [])
        self.env_models_map()  # NAME=SPEC / NAME=IN,OUT entries are checked now
        if isinstance(self.env_system_prompt, str) and self.env_system_prompt.strip().lower() in ("none", "null"):
            self.env_system_prompt = None
        if self.env_max_tokens < 0:
            raise ConfigError(f"--env-max-tokens must be >= 0 (0: no limit); got {self.env_max_tokens!r}.")
        if self.env_temperature is not None and self.env_temperature < 0:
            raise ConfigError(f"--env-temperature must be >= 0 (0: greedy); got {self.env_temperature!r}.")
        if self.max_calls is not None and self.max_calls < 0:
            raise ConfigError(f"--max-calls must be >= 0 (or left out), got {self.max_calls!r}.")
        if self.max_cost is not None and self.max_cost < 0:
            raise ConfigError(f"--max-cost must be >= 0 (or left out), got {self.max_cost!r}.")
        mode = str(self.cache_mode).strip().lower().replace("_", "-")
        if mode not in CACHE_MODES:
            raise ConfigError(f"--cache-mode must be one of {', '.join(CACHE_MODES)}; got {self.cache_mode!r}.")
        self.cache_mode = mode
        for name in ("env_max_concurrency", "env_rpm", "env_tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0 (or left out), got {value!r}.")
        if self.env_price_per_1k and (len(self.env_price_per_1k) != 2 or any(float(v) < 0 for v in self.env_price_per_1k)):
            raise ConfigError(f"--env-price-per-1k takes two numbers >= 0, USD per 1,000 input tokens and per 1,000 "
                              f"output tokens (e.g. --env-price-per-1k 0.15 0.6); got {self.env_price_per_1k!r}.")

    def env_models_map(self) -> tuple[dict[str, str], dict[str, tuple[float, float]]]:
        """``({name: spec}, {name: (usd_in, usd_out) per 1k tokens})`` from ``env_models`` and ``env_model_prices``.

        >>> BackendSettings(env_models=["cheap=sim", "strong=sim-strong"], env_model_prices=["strong=0.01:0.04"]).env_models_map()
        ({'cheap': 'sim', 'strong': 'sim-strong'}, {'strong': (0.01, 0.04)})
        """
        models: dict[str, str] = {}
        for entry in self.env_models:
            name, sep, spec = str(entry).partition("=")
            if not sep or not name.strip() or not spec.strip() or name.strip() in models:
                raise ConfigError(f"--env-models takes NAME=SPEC entries with distinct names (e.g. cheap=sim "
                                  f"strong=openai:gpt-4o); got {entry!r}.")
            models[name.strip()] = spec.strip()
        prices: dict[str, tuple[float, float]] = {}
        for entry in self.env_model_prices:
            name, sep, values = str(entry).partition("=")
            try:
                pair = tuple(float(v) for v in values.split(":"))
            except ValueError:
                pair = ()
            if not sep or len(pair) != 2 or min(pair) < 0 or name.strip() not in models:
                raise ConfigError(f"--env-model-prices takes NAME=IN:OUT entries (USD per 1,000 input / output tokens, "
                                  f">= 0) for models of --env-models {sorted(models)}; got {entry!r}.")
            prices[name.strip()] = (pair[0], pair[1])
        if self.env_default_model and self.env_default_model not in models:
            raise ConfigError(f"--env-default-model {self.env_default_model!r} is not one of --env-models "
                              f"{sorted(models)}.")
        return models, prices

    def env_sampling(self) -> dict[str, Any]:
        """Keyword arguments of every env-LLM call."""
        return {**({"temperature": self.env_temperature} if self.env_temperature is not None else {}),
                **({"max_tokens": self.env_max_tokens} if self.env_max_tokens > 0 else {})}


@dataclass
class RunSettings(BackendSettings):
    """Settings shared by ``promptr1 train``, ``sft``, ``eval`` and ``chat`` (the env LLM's in
    :class:`BackendSettings`)."""

    # --- who plays
    model: str = "smollm2"
    """Agent policy: ``smollm2`` (offline SmolLM2-135M-Instruct), ``tiny`` (random test model), an HF id or
    folder, or a training run folder (its latest checkpoint)."""
    tasks: list[str] = field(default_factory=lambda: ["synthetic"])
    """Task sources: ``synthetic`` (bundled) or parquet/JSONL files. Training concatenates them; evaluation
    reports each as its own dataset."""

    # --- the episode
    max_turns: int = 5
    """Agent turns per episode (ref: 5)."""
    max_response_chars: int = 2048
    """Env-LLM reply truncation in characters (ref: 2048)."""
    reward_variant: str = "faithful"
    """Reward variant (``faithful`` is the reference's; ``answer_gated`` fixes its quirks; ``cost_aware``:
    ``answer_gated``'s minus what the episode's env-LLM calls cost, see ``cost_weight``)."""
    cost_weight: float = 0.0
    """With ``reward_variant: cost_aware``: the reward loses ``cost_weight x dollars`` an episode spends (divided by
    ``cost_reference_usd`` when set)."""
    cost_reference_usd: float | None = None
    """With ``cost_aware``: count the cost in units of this many USD (e.g. one call of the expensive model); none:
    dollars."""
    env_history: str = "seen"
    """What the env LLM's history keeps of its earlier replies: ``seen`` (the reply as the agent saw it, cut at
    ``max_response_chars``; never more), ``full`` (the whole reply, re-sent every later turn) or ``reference``
    (the official code's: an empty assistant message once the reply's JSON text is over ``max_response_chars``)."""
    answer_metric: str = "f1"
    """What the reward's answer term measures: ``f1`` for every task (ref), ``em``, ``math``, ``ssim``, or ``auto``
    (F1 for QA, numeric-equivalent EM for math, SSim for text, by task type)."""

    # --- agent decoding
    max_new_tokens: int = 256
    """Agent tokens per turn (ref: 1,024; smaller so that CPU runs stay short)."""
    max_seq_len: int = 4096
    """Token budget of a whole episode: prompt, turns and replies (ref: 8,192)."""
    temperature: float = 1.0
    """Agent sampling temperature (ref: 1.0 in training); 0 decodes greedily."""
    top_p: float = 1.0
    """Agent nucleus sampling (ref: 1.0 in training)."""
    repetition_penalty: float = 1.0
    """Agent repetition penalty on tokens already in the episode (1.0: none; ref evaluation: 1.05)."""
    model_dtype: str = "auto"
    """Dtype the agent model (and the training reference) is loaded in: ``auto`` (bf16 on a GPU that supports it,
    else float32), ``bf16``, ``fp16`` or ``fp32``. The reference is loaded in it directly, never via a float32 copy."""
    kv_reuse: bool = True
    """Keep each episode's KV cache across its turns, so that a turn's prefill covers only the new tokens."""
    rollout_max_batch_tokens: int = 0
    """Cap on one generation batch: the sum over its episodes of (tokens so far + ``max_new_tokens``); more
    episodes than fit are generated in several batches and the caches of those waiting are kept off the
    accelerator, so its memory is bounded whatever the number of episodes (0: no cap)."""
    framing: str = "ours"
    """Agent-side framing: ``ours`` (forgiving), ``reference`` (the official training code's: tool schema, JSON
    results, ``<think>`` prefill, stop only at the end-of-turn token, error replies to malformed calls) or
    ``reference-eval`` (the official evaluation scripts': plain-text prompts wrapped into the tool call, the whole
    conversation as one user message)."""

    # --- systems and outputs
    seed: int = 0
    """Random seed: which tasks are drawn, the agent's sampling, and any random initialisation (the same seed
    replays the same run on the same machine; ``train --deterministic`` also makes GPU kernels repeatable)."""
    cpu: bool = False
    """Force the CPU even when an accelerator is present."""
    output_dir: str = "runs/promptr1"
    """Folder the run writes to: checkpoints, logs and the summary (``train``, ``sft``), the report, transcripts
    and chart (``eval``)."""
    overwrite: bool = False
    """Delete an earlier run's results in ``output_dir`` and start afresh. Without it ``train`` and ``sft`` refuse a
    folder holding an earlier run's checkpoints (unless resuming) and ``eval`` resumes from the results there."""
    plugins: str = ""
    """Comma-separated modules or .py files imported first (they register algorithms, backends, ...)."""
    progress: bool = True
    """Show a console progress bar."""

    def __post_init__(self) -> None:
        """Reject episode and decoding settings no run can use, when the settings are made (before any load)."""
        super().__post_init__()
        positive = {"max_turns": self.max_turns, "max_response_chars": self.max_response_chars,
                    "max_new_tokens": self.max_new_tokens, "max_seq_len": self.max_seq_len}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= 1; got {value!r}.")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0 (0: greedy); got {self.temperature!r}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1]; got {self.top_p!r}.")
        if self.env_history not in ("seen", "full", "reference"):
            raise ConfigError(f"--env-history must be seen, full or reference; got {self.env_history!r}.")

    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~promptr1.envs.collab_env.PromptCollabEnv` for these settings: every
        env of a run (SFT demonstrations, training, evaluation) is built from the same ones."""
        return {
            "max_turns": self.max_turns,
            "max_response_chars": self.max_response_chars,
            "reward_variant": self.reward_variant,
            "answer_metric": self.answer_metric,
            "framing": self.framing,
            "env_history": self.env_history,
            "sampling": self.env_sampling(),
            "env_system_prompt": self.env_system_prompt,
            **self.model_kwargs(),
        }

    def model_kwargs(self) -> dict[str, Any]:
        """The env's settings for several env LLMs and the cost term, only where they are used (so an env of the
        default settings is built exactly as before)."""
        out: dict[str, Any] = {}
        if self.env_models:
            _, prices = self.env_models_map()
            out.update(default_model=self.env_default_model or None, model_prices=prices)
        if self.reward_variant == "cost_aware":
            out.update(cost_weight=self.cost_weight, cost_reference_usd=self.cost_reference_usd)
        return out


# ----------------------------------------------------------------------------- parsing


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, Sequence, tuple)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type.

    >>> _coerce("3", int, "steps"), _coerce("no", bool, "cpu"), _coerce("1e-5", float, "lr")
    (3, False, 1e-05)
    """
    origin = typing.get_origin(tp)
    if _is_list(tp):
        items = value if isinstance(value, (list, tuple)) else [value]
        (item_tp,) = typing.get_args(tp)[:1] or (str,)
        out: list[Any] = []
        for item in items:
            if isinstance(item, str) and item_tp is str:
                out.extend(p for p in (s.strip() for s in item.split(",")) if p) if "," in item else out.append(item)
            else:
                out.append(_coerce(item, item_tp, key))
        return out
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
        msg += f" Did you mean '--{hint[0].replace('_', '-')}'?"
    msg += " Run with --help to list the valid options."
    return ConfigError(msg)


def parse_overrides(cls: type, argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``--key value`` / ``--key=value`` / bare ``--flag`` (booleans) into typed values.

    >>> parse_overrides(RunSettings, ["--cpu", "--max-turns", "8", "--tasks", "a.jsonl,b.jsonl"])
    {'cpu': True, 'max_turns': 8, 'tasks': ['a.jsonl', 'b.jsonl']}
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
            elif name in types_ and _is_list(types_[name]):
                j = i + 1
                while j < len(argv) and not argv[j].startswith("--"):
                    j += 1
                if j == i + 1:
                    raise ConfigError(f"option '--{key}' needs one or more values, e.g. '--{key} A B'.")
                value, i = argv[i + 1 : j], j
            elif nxt is None:
                raise ConfigError(f"option '--{key}' needs a value, e.g. '--{key} VALUE'.")
            else:
                value, i = nxt, i + 2
        name = key.replace("-", "_")
        if name not in types_:
            raise _unknown_key_error(cls, key)
        out[name] = _coerce(value, types_[name], name)
    return out


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = (), *,
                strict: bool = True) -> C:
    """Build ``cls`` from defaults, then a YAML file (if given), then ``--key value`` overrides. With
    ``strict=False`` the file's keys that are not settings of ``cls`` are skipped (a config written for another
    command, e.g. a training config read by ``promptr1 play`` for its env settings)."""
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
                if not strict:
                    continue
                err = _unknown_key_error(cls, str(key))
                raise ConfigError(f"in {str(path)!r}: {err}")
            values[name] = _coerce(value, types_[name], name)
    values.update(parse_overrides(cls, overrides))
    presets = getattr(cls, "PRESETS", {})
    if values.get("preset"):
        if values["preset"] not in presets:
            from promptr1.registry import did_you_mean

            raise ConfigError(did_you_mean(f"preset for {cls.__name__}", values["preset"], sorted(presets)))
        for key, value in presets[values["preset"]].items():
            values.setdefault(key, value)  # a setting the user gave wins over the preset
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def bundled_config(name: str) -> pathlib.Path | None:
    """Path of a config shipped in ``promptr1/configs`` (``quickstart`` -> quickstart.yaml), if any."""
    from importlib import resources

    stem = name[:-5] if name.endswith(".yaml") else name
    try:
        p = resources.files("promptr1") / "configs" / f"{stem}.yaml"
    except (ModuleNotFoundError, TypeError):
        return None
    return pathlib.Path(str(p)) if p.is_file() else None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict (for YAML dumps and TensorBoard hparams)."""
    return dataclasses.asdict(cfg)


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after a field) read from the source."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's documentation of a field wins
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name):
                if isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
                    if isinstance(b.value.value, str):
                        docs[a.target.id] = " ".join(b.value.value.split())
    return docs


#: The headings of ``--help``, in order, each with what it covers.
HELP_HEADINGS: dict[str, str] = {
    "model": "the agent: which model, how it is loaded and adapted",
    "environment": "the tasks, the env LLM and the episode",
    "rollout": "how the agent samples its turns, and how many episodes play at once",
    "algorithm": "the optimisation: steps, learning rate, loss",
    "warm start": "supervised warm start before RL",
    "evaluation": "what is evaluated, on what, and how it is scored",
    "budget": "the env LLM's rate limits, price, budget and cache",
    "system": "seed, device, precision, plug-ins, failure rules",
    "output": "where results go and what is logged",
    "server": "where it listens, who may call it, and the limits on each request",
}

#: The heading of each setting that every command shares (:class:`RunSettings`, :class:`BackendSettings`). A
#: command's config adds its own settings' headings in its ``HELP_GROUPS`` class attribute, same shape; a subclass's
#: entry wins. A setting under no heading is listed under "other", and the tests fail (see :func:`help_problems`).
SHARED_HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "model": ("model", "model_dtype"),
    "environment": ("tasks", "env_llm", "env_temperature", "env_max_tokens", "env_system_prompt", "env_models",
                    "env_model_prices", "env_default_model", "max_turns", "max_response_chars", "env_history",
                    "reward_variant", "cost_weight", "cost_reference_usd", "answer_metric", "framing"),
    "rollout": ("max_new_tokens", "max_seq_len", "temperature", "top_p", "repetition_penalty", "kv_reuse",
                "rollout_max_batch_tokens"),
    "budget": ("max_calls", "max_cost", "env_price_per_1k", "env_max_concurrency", "env_rpm", "env_tpm", "cache",
               "cache_mode"),
    "system": ("seed", "cpu", "plugins"),
    "output": ("output_dir", "overwrite", "progress"),
}


def _help_headings(cls: type) -> dict[str, str]:
    """``{setting: heading}`` for ``cls``: :data:`SHARED_HELP_GROUPS`, then each class's ``HELP_GROUPS`` along the
    MRO (a subclass's entry wins)."""
    out = {name: heading for heading, names in SHARED_HELP_GROUPS.items() for name in names}
    for klass in reversed(cls.__mro__):
        for heading, names in klass.__dict__.get("HELP_GROUPS", {}).items():
            for name in names:
                out.pop(name, None)  # listed where the subclass puts it, in the subclass's order
                out[name] = heading
    return out


def ignored_settings(cls: type) -> tuple[str, ...]:
    """The settings ``cls`` inherits but its command does not use (its ``IGNORED_SETTINGS``): left out of its
    ``--help`` and refused on its command line (a YAML file shared with other commands may still hold them)."""
    return tuple(getattr(cls, "IGNORED_SETTINGS", ()))


def plain_text(text: str) -> str:
    """A docstring's reStructuredText markup as plain text, for ``--help``.

    >>> plain_text("``auto`` or :class:`~promptr1.config.RunSettings` (see :func:`load_config`, :data:`X`).")
    'auto or RunSettings (see load_config(), X).'
    >>> plain_text("turns separated by lines of ``---``::")
    'turns separated by lines of ---:'
    """
    import re

    def role(m: re.Match) -> str:
        target = m["target"].split(".")[-1] if m["tilde"] else m["target"]
        return target + ("()" if m["role"] in ("func", "meth") and not target.endswith(")") else "")

    text = re.sub(r":(?P<role>[a-z]+):`(?P<tilde>~?)(?P<target>[^`]+)`", role, text)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.DOTALL)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"\1", text)  # *emphasis*
    return re.sub(r"::(?=\s|$)", ":", text)


def help_width() -> int:
    """The width ``--help`` wraps to: the terminal's (``COLUMNS`` when set), between 40 and 120 columns."""
    import shutil

    return max(40, min(120, shutil.get_terminal_size((100, 24)).columns - 1))


def _metavar(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if _is_list(tp):
        (item,) = typing.get_args(tp)[:1] or (str,)
        return f"{_metavar(item)} [...]"
    return {bool: "[BOOL]", int: "INT", float: "NUM", str: "TEXT"}.get(tp, "VALUE")


def _shown_default(cls: type, f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if default is None:
        return "the algorithm's" if f.name in getattr(cls, "ALGORITHM_SETTINGS", ()) else "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default)) if default else "none"
    if default == "":
        return "empty"
    return str(default)


def render_options(sections: Sequence[tuple[str, Sequence[tuple[str, str]]]], width: int | None = None) -> str:
    """Sections of ``(option, description)`` pairs under their headings, wrapped to ``width`` columns (the
    terminal's by default): an option's description beside it, or under it when the option is long."""
    import textwrap

    width = width or help_width()
    col = min(30, max(16, width // 3))
    out: list[str] = []
    for heading, rows in sections:
        if not rows:
            continue
        out.append("")
        out.extend(textwrap.wrap(heading, width, subsequent_indent="  ", break_on_hyphens=False))
        for option, text in rows:
            lead = f"  {option}"
            if len(lead) + 2 > col:
                out.extend(textwrap.wrap(lead, width, subsequent_indent="      ", break_on_hyphens=False))
                lead = ""
            body = textwrap.wrap(text, width - col, break_on_hyphens=False) or [""]
            out.append((lead.ljust(col) + body[0]).rstrip())
            out.extend(" " * col + line for line in body[1:])
    return "\n".join(out[1:])


def _option_rows(cls: type) -> dict[str, list[tuple[str, str]]]:
    """``{heading: [(option, description)]}`` of ``cls``'s settings in field order, its ignored ones left out."""
    docs, headings, hidden = _field_docs(cls), _help_headings(cls), set(ignored_settings(cls))
    types_ = _field_types(cls)
    rank = {name: i for i, name in enumerate(headings)}  # under a heading, settings in the order they are listed
    groups: dict[str, list[tuple[str, str]]] = {h: [] for h in (*HELP_HEADINGS, "other")}
    for f in sorted(fields(cls), key=lambda f: rank.get(f.name, len(rank))):
        if f.name in hidden:
            continue
        option = f"--{f.name.replace('_', '-')} {_metavar(types_[f.name])}"
        text = plain_text(docs.get(f.name, "")).strip()
        text = f"{text} (default: {_shown_default(cls, f)})".strip()
        groups[headings.get(f.name, "other")].append((option, text))
    return groups


def help_problems(cls: type) -> list[str]:
    """What ``cls``'s ``--help`` lacks: settings without a description, settings under no heading, and ignored
    settings that are not settings (each a sentence saying how to fix it). Empty when the help is complete."""
    docs, headings, names = _field_docs(cls), _help_headings(cls), {f.name for f in fields(cls)}
    problems = []
    for name in sorted(names - set(ignored_settings(cls))):
        if not docs.get(name, "").strip():
            problems.append(f"{cls.__name__}.{name} has no description: add a docstring (a string literal on the "
                            f"line after the field).")
        if headings.get(name) not in HELP_HEADINGS:
            problems.append(f"{cls.__name__}.{name} is under no help heading: add it to SHARED_HELP_GROUPS "
                            f"(promptr1/config.py) or to {cls.__name__}.HELP_GROUPS, under one of "
                            f"{', '.join(HELP_HEADINGS)}.")
    problems += [f"{cls.__name__}.IGNORED_SETTINGS names {n!r}, which is not one of its settings."
                 for n in ignored_settings(cls) if n not in names]
    return problems


def config_help(cls: type, *, width: int | None = None) -> str:
    """The options of ``cls`` for ``--help``: grouped under :data:`HELP_HEADINGS`, each with its value type,
    description and default, in plain text wrapped to ``width`` (the terminal's by default)."""
    groups = _option_rows(cls)
    sections = [(f"{h} ({HELP_HEADINGS[h]}):" if h in HELP_HEADINGS else f"{h}:", rows) for h, rows in groups.items()]
    return render_options(sections, width)


def command_help(cls: type, prog: str, *, usage: str = "[options]", about: str = "", epilog: str = "",
                 width: int | None = None) -> str:
    """A sub-command's whole ``--help``: usage, what it does, the options of ``cls`` by heading, the general
    options (``--config``, ``--help``) and ``epilog``, wrapped to ``width`` columns (the terminal's by default)."""
    import textwrap

    width = width or help_width()

    def para(text: str) -> str:
        return "\n".join(textwrap.wrap(plain_text(" ".join(text.split())), width, break_on_hyphens=False))

    head = textwrap.wrap(f"usage: promptr1 {prog} {usage}", width, subsequent_indent="    ", break_on_hyphens=False)
    parts = ["\n".join(head)]
    if about:
        parts.append(para(about))
    parts.append(para("Every option is also a key of a YAML file given with --config (underscores or dashes); "
                      "options on the command line win over the file."))
    parts.append(config_help(cls, width=width))
    parts.append(render_options([("general:", [
        ("--config FILE|NAME", ("A YAML file of these options, or a bundled config by name: "
                                f"{', '.join(bundled_configs()) or 'none'}.")),
        ("-h, --help", "Show this help and exit."),
    ])], width))
    if epilog:
        parts.extend(para(p) for p in epilog.split("\n\n"))
    return "\n\n".join(parts)


def bundled_configs() -> list[str]:
    """Names of the configs shipped in ``promptr1/configs``."""
    from importlib import resources

    try:
        folder = resources.files("promptr1") / "configs"
        return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    except (ModuleNotFoundError, TypeError, OSError):
        return []


# ----------------------------------------------------------------------------- commands


def _split_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    argv = list(argv)
    path = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a value: a YAML file or a bundled name such as 'quickstart'.")
            path, i = argv[i + 1], i + 2
        elif a.startswith("--config="):
            path, i = a.split("=", 1)[1], i + 1
        else:
            rest.append(a)
            i += 1
    if path is not None and not pathlib.Path(path).is_file():
        bundled = bundled_config(path)
        if bundled is None:
            raise ConfigError(f"--config {path!r}: no such file, and no bundled config of that name (try 'quickstart').")
        path = str(bundled)
    return path, rest


#: Errors a command reports as a usage error (exit code 2) with its message, instead of a traceback.
USAGE_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ImportError, ValueError, FileNotFoundError,
                                                  FileExistsError)


def run_command(cls: type[C], argv: Sequence[str], prog: str, body: Callable[[C], int | None], *,
                default_config: str | None = None, positional: str | None = None, usage: str | None = None,
                about: str = "", epilog: str = "") -> int:
    """A sub-command's frame: parse ``argv`` into ``cls`` (``--help`` prints the options), import the plug-ins
    once, before anything else, then return ``body(cfg)``'s exit code. A usage error (:data:`USAGE_ERRORS`) prints
    ``promptr1 PROG: message`` and returns 2. ``usage``, ``about`` and ``epilog``: see :func:`parse_command`."""
    import sys

    try:
        cfg = parse_command(cls, argv, prog, default_config=default_config, positional=positional, usage=usage,
                            about=about, epilog=epilog)
        if cfg is None:
            return 0
        from promptr1.plugins import import_plugins

        import_plugins(getattr(cfg, "plugins", ""))
        return int(body(cfg) or 0)
    except USAGE_ERRORS as exc:
        print(f"promptr1 {prog}: {exc}", file=sys.stderr)
        return 2


def parse_command(cls: type[C], argv: Sequence[str], prog: str, *, default_config: str | None = None,
                  positional: str | None = None, usage: str | None = None, about: str = "",
                  epilog: str = "") -> C | None:
    """Parse a sub-command's arguments into ``cls``; ``None`` after printing ``--help`` (:func:`command_help`:
    ``usage`` is what follows ``promptr1 PROG`` in its first line, ``about`` what the command does, ``epilog``
    paragraphs after the options).

    ``--config FILE.yaml`` (or a bundled name) is read first, then ``--key value`` options. Leading
    arguments that are not options are the values of the list setting ``positional`` (e.g. task files).
    A setting in ``cls.IGNORED_SETTINGS`` is refused on the command line (a YAML file may hold it).
    Raises :class:`ConfigError` for anything it cannot accept.
    """
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        if usage is None:
            usage = (f"[{positional.upper()} ...] " if positional else "") + "[--config FILE|NAME] [options]"
        print(command_help(cls, prog, usage=usage, about=about or (cls.__doc__ or "").strip(), epilog=epilog))
        return None
    lead: list[str] = []
    if positional:
        while argv and not argv[0].startswith("-"):
            lead.append(argv.pop(0))
    path, rest = _split_config(argv)
    ignored = set(ignored_settings(cls))
    for tok in rest:
        name = tok[2:].split("=", 1)[0].replace("-", "_") if tok.startswith("--") else ""
        if name in ignored:
            raise ConfigError(f"option '--{name.replace('_', '-')}' does not apply to promptr1 {prog}: drop it "
                              f"('promptr1 {prog} --help' lists the options it takes).")
    if path is None and default_config is not None:
        path = str(bundled_config(default_config) or "") or None
    if lead:
        rest = [f"--{positional.replace('_', '-')}", *lead, *rest]
    return load_config(cls, path, rest)
