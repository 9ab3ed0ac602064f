"""Settings: groups of documented dataclass fields, each setting declared once; YAML files and the command line on top.

A *settings group* is a dataclass of the settings that configure one thing (the env LLM, the budget, the episode,
the agent's decoding...), each field with its default, an attribute docstring saying what it does and where the
default comes from, and its check in the group's ``__post_init__``. A command's settings are the groups it uses
(:class:`RunSettings` is the groups every command shares; :class:`promptr1.agents.config.GRPOConfig` adds the
algorithm, warm start, validation and checkpoint groups), and each layer takes the group it needs as it is
(:meth:`Settings.pick`): the env its :class:`EpisodeSettings`, the backend factory its :class:`BackendSettings`.

The command line and YAML loading are generated from the same fields with :mod:`argparse` (one option a field,
grouped under the group's heading in ``--help``); values come from the defaults, then a YAML file, then options.

>>> cfg = load_config(RunSettings, overrides=["--max-turns", "3", "--tasks", "a.jsonl", "b.jsonl"])
>>> cfg.max_turns, cfg.tasks
(3, ['a.jsonl', 'b.jsonl'])
>>> try:
...     load_config(RunSettings, overrides=["--max-trns", "3"])
... except ConfigError as exc:
...     print(exc)
unknown option '--max-trns'. Did you mean '--max-turns'? (--help lists the options)
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import pathlib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from promptr1.core.tags import check_model_name

__all__ = [
    "BackendSettings",
    "BudgetSettings",
    "ConfigError",
    "DecodingSettings",
    "EnvLLMSettings",
    "EpisodeSettings",
    "ModelSettings",
    "OutputSettings",
    "ParsedSettings",
    "RunSettings",
    "Settings",
    "SystemSettings",
    "TaskSettings",
    "bundled_config",
    "bundled_configs",
    "check_amount",
    "check_whole",
    "build_parser",
    "config_to_dict",
    "field_docs",
    "load_config",
    "parse_settings",
    "plain_text",
    "resolve_config",
    "setting_groups",
    "text_or_file",
]

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration key or value that the command does not accept."""


#: The values of ``cache_mode``.
CACHE_MODES = ("replay-or-record", "replay", "record", "off")
#: The values of ``env_history``.
ENV_HISTORY_MODES = ("seen", "full", "reference")


def check_whole(name: str, value: Any, low: int = 1) -> None:
    """The one check of a whole-number setting: an int >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} (--{name.replace('_', '-')}) must be a whole number >= {low}; got {value!r}.")


def check_amount(name: str, value: Any, *, positive: bool = False, optional: bool = True) -> None:
    """The one check of a number setting: finite and >= 0 (> 0 with ``positive``), or none where ``optional``."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name} (--{name.replace('_', '-')}) must be a finite number {bound}"
                          f"{' (or left out)' if optional else ''}; got {value!r}.")


def text_or_file(name: str, value: str) -> str:
    """A text setting's value: ``@FILE`` is replaced by that file's text (UTF-8, as written but for one final line
    break, which editors add), anything else is the text itself.

    >>> text_or_file("agent_system_prompt", "You are a helpful assistant.")
    'You are a helpful assistant.'
    """
    if not isinstance(value, str) or not value.startswith("@"):
        return value
    path = value[1:]
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--{name.replace('_', '-')} {value}: cannot read {path!r} ({exc}); give the text itself, "
                          f"or @FILE with a readable UTF-8 file.") from None
    if not text.strip():
        raise ConfigError(f"--{name.replace('_', '-')} {value}: {path!r} is empty; give a file holding the text.")
    return text.removesuffix("\n")


@dataclass
class Settings:
    """The base of every settings group. ``HEADING`` titles the group's options in ``--help``; ``ORDER`` places
    the group among the others there (smaller first)."""

    HEADING: ClassVar[str] = ""
    ORDER: ClassVar[int] = 100

    def __post_init__(self) -> None:
        """Each group checks its own fields in its ``__post_init__``, calling ``super().__post_init__()`` first."""

    @classmethod
    def pick(cls: type[C], settings: Any, **changes: Any) -> C:
        """This group's settings taken from a larger settings object (a command's), with ``changes``.

        >>> EpisodeSettings.pick(RunSettings(max_turns=3)).max_turns
        3
        """
        values = {f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)}
        return cls(**{**values, **changes})


# ----------------------------------------------------------------------------- the groups every command shares


@dataclass
class EnvLLMSettings(Settings):
    HEADING: ClassVar[str] = "env LLM (the large LLM the agent prompts, or several)"
    ORDER: ClassVar[int] = 30

    env_llm: str = "sim"
    """Environment LLM spec (``sim``, ``smollm2``, ``openai:MODEL``, ``hf:PATH``...)."""
    env_temperature: float | None = 0.0
    """Env-LLM sampling temperature (0: greedy, so that replies are reproducible); none (YAML ``null``,
    ``--env-temperature none``) sends no temperature, so the server's default applies (ref: none is sent)."""
    env_max_tokens: int = 512
    """Env-LLM reply budget in tokens (0: no limit, as in the reference)."""
    env_system_prompt: str | None = "auto"
    """The env LLM's system message: ``auto`` (the backend's preferred one, else ours), a text, ``@FILE`` (a file's
    text), or none (YAML ``null``, or ``--env-system-prompt none``) for no system message. The reference's own is
    its prose, not shipped: see docs/evaluation.md for where to find it."""
    env_models: list[str] = field(default_factory=list)
    """``NAME=SPEC`` entries (e.g. ``cheap=sim strong=sim-strong``): several env LLMs in one env, the agent naming one
    per call (``[strong] ...``, or ``"model"`` in a JSON call); empty: the one ``env_llm``."""
    env_model_prices: list[str] = field(default_factory=list)
    """``NAME=IN:OUT`` entries: a model's USD per 1,000 input and output tokens (a model without one: its backend's own
    cost)."""
    env_default_model: str = ""
    """The model a call that names none goes to (empty: the first of ``env_models``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.env_models = list(self.env_models or [])
        self.env_model_prices = list(self.env_model_prices or [])
        self.env_models_map()  # NAME=SPEC / NAME=IN:OUT entries are checked now
        if isinstance(self.env_system_prompt, str) and self.env_system_prompt.strip().lower() in ("none", "null"):
            self.env_system_prompt = None
        if self.env_system_prompt is not None:
            self.env_system_prompt = text_or_file("env_system_prompt", self.env_system_prompt)
        check_whole("env_max_tokens", self.env_max_tokens, 0)
        check_amount("env_temperature", self.env_temperature)

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
            try:
                check_model_name(name.strip(), what=f"--env-models {entry!r}: the name")
            except ValueError as e:
                raise ConfigError(str(e)) from None
            models[name.strip()] = spec.strip()
        prices: dict[str, tuple[float, float]] = {}
        for entry in self.env_model_prices:
            name, sep, values = str(entry).partition("=")
            try:
                pair = tuple(float(v) for v in values.split(":"))
            except ValueError:
                pair = ()
            money = len(pair) == 2 and all(math.isfinite(v) and v >= 0 for v in pair)
            if not sep or not money or name.strip() not in models:
                raise ConfigError(f"--env-model-prices takes NAME=IN:OUT entries (USD per 1,000 input / "
                                  f"output tokens, finite and >= 0) for models of --env-models "
                                  f"{sorted(models)}; got {entry!r}.")
            prices[name.strip()] = (pair[0], pair[1])
        if self.env_default_model and self.env_default_model not in models:
            raise ConfigError(f"--env-default-model {self.env_default_model!r} is not one of --env-models "
                              f"{sorted(models)}.")
        return models, prices

    def env_llm_label(self) -> str:
        """The env LLM as reports name it: ``env_llm``, or with ``env_models`` the models and the default one.

        >>> EnvLLMSettings(env_models=["cheap=sim", "strong=sim-strong"], env_default_model="strong").env_llm_label()
        'cheap=sim strong=sim-strong (default strong)'
        """
        if not self.env_models:
            return self.env_llm
        models, _ = self.env_models_map()
        return f"{' '.join(self.env_models)} (default {self.env_default_model or next(iter(models))})"

    def env_sampling(self) -> dict[str, Any]:
        """Keyword arguments of every env-LLM call."""
        return {**({"temperature": self.env_temperature} if self.env_temperature is not None else {}),
                **({"max_tokens": self.env_max_tokens} if self.env_max_tokens > 0 else {})}


@dataclass
class BudgetSettings(Settings):
    HEADING: ClassVar[str] = "budget (the env LLM's rate limits, price, budget and cache)"
    ORDER: ClassVar[int] = 80

    env_max_concurrency: int | None = None
    """Env-LLM requests in flight at once (backends that take ``max_concurrency``: ``openai``); none: theirs."""
    env_rpm: float | None = None
    """Env-LLM requests per minute (backends that take ``rpm``: ``openai``); none: no limit."""
    env_tpm: float | None = None
    """Env-LLM tokens per minute (backends that take ``tpm``: ``openai``); none: no limit."""
    env_price_per_1k: list[float] = field(default_factory=list)
    """Two numbers, USD per 1,000 input and per 1,000 output tokens (backends that take ``price_per_1k``:
    ``openai``): the cost that ``max_cost`` and ``--dry-run`` count."""

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

    def __post_init__(self) -> None:
        super().__post_init__()
        check_whole("max_calls", self.max_calls, 0) if self.max_calls is not None else None
        check_amount("max_cost", self.max_cost)
        mode = str(self.cache_mode).strip().lower().replace("_", "-")
        if mode not in CACHE_MODES:
            raise ConfigError(f"--cache-mode must be one of {', '.join(CACHE_MODES)}; got {self.cache_mode!r}.")
        self.cache_mode = mode
        for name in ("env_max_concurrency", "env_rpm", "env_tpm"):
            check_amount(name, getattr(self, name), positive=True)
        if self.env_price_per_1k and (len(self.env_price_per_1k) != 2 or any(
                not math.isfinite(float(v)) or float(v) < 0 for v in self.env_price_per_1k)):
            raise ConfigError(f"--env-price-per-1k takes two numbers (finite, >= 0), USD per 1,000 input tokens and "
                              f"per 1,000 output tokens (e.g. --env-price-per-1k 0.15 0.6); got {self.env_price_per_1k!r}.")


@dataclass
class BackendSettings(BudgetSettings, EnvLLMSettings):
    """The env LLM of a run and everything around it: sampling, system prompt, client limits, price, budget and
    cache. One block, read by every command, the TRL example and the verl agent loop;
    :func:`promptr1.llm_backends.from_settings` turns it into the backend a run uses."""


@dataclass
class TaskSettings(Settings):
    HEADING: ClassVar[str] = "tasks (what the agent is asked)"
    ORDER: ClassVar[int] = 10

    tasks: list[str] = field(default_factory=lambda: ["synthetic"])
    """Task sources: ``synthetic`` or ``geo`` (bundled), parquet/JSONL files, or ``hf:NAME_OR_FOLDER[:SPLIT]``
    datasets. Training concatenates them; evaluation reports each as its own dataset."""


@dataclass
class EpisodeSettings(Settings):
    """How one episode is played and scored: what :class:`~promptr1.envs.collab_env.PromptCollabEnv` takes."""

    HEADING: ClassVar[str] = "episode (turns, replies, framing and reward)"
    ORDER: ClassVar[int] = 20

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
    framing: str = "ours"
    """Agent-side framing: ``ours`` (forgiving), ``reference`` (the official training code's: tool schema, JSON
    results, ``<think>`` prefill, stop only at the end-of-turn token, error replies to malformed calls) or
    ``reference-eval`` (the official evaluation scripts': plain-text prompts wrapped into the tool call, the whole
    conversation as one user message)."""

    agent_system_prompt: str = ""
    """The agent's system message: a text, used verbatim, or ``@FILE`` (a file's text); empty: the framing's own
    (ours; under the reference framings our wording of the reference's, with the tool's schema). A checkpoint trained
    by the reference expects the reference's own text: docs/evaluation.md says where to find it (not shipped)."""
    agent_tool_description: str = ""
    """The ``prompt`` tool as the reference framings' default system message describes it: a whole function schema
    as a JSON object (verbatim), a plain description replacing ours, or ``@FILE``; empty: ours."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_whole("max_turns", self.max_turns)
        check_whole("max_response_chars", self.max_response_chars)
        if self.env_history not in ENV_HISTORY_MODES:
            raise ConfigError(f"env_history must be one of {', '.join(ENV_HISTORY_MODES)} (seen: the reply as the "
                              f"agent saw it; full: the whole reply; reference: the official code's); "
                              f"got {self.env_history!r}.")
        check_amount("cost_weight", self.cost_weight, optional=False)
        check_amount("cost_reference_usd", self.cost_reference_usd, positive=True)
        self.agent_system_prompt = text_or_file("agent_system_prompt", self.agent_system_prompt)
        self.agent_tool_description = text_or_file("agent_tool_description", self.agent_tool_description)
        if self.agent_tool_description:
            if not self.framing.startswith("reference"):
                raise ConfigError("--agent-tool-description is for the reference framings (our framing's system text "
                                  "describes no tool): add --framing reference, or leave it out.")
            if self.agent_system_prompt:
                raise ConfigError("--agent-tool-description goes into the framing's own system text: with "
                                  "--agent-system-prompt, write the tool's schema into that text instead.")
            # its JSON form is checked by the framing when the env is built (envs.framing.tool_schema_text)


@dataclass
class ModelSettings(Settings):
    HEADING: ClassVar[str] = "model (the agent: which model and how it is loaded)"
    ORDER: ClassVar[int] = 0

    model: str = "smollm2"
    """Agent policy: ``smollm2`` (offline SmolLM2-135M-Instruct), an HF id or folder, a training run folder (its
    latest checkpoint), or ``tiny`` (random test model, with ``--plugins promptr1.testing``)."""
    model_dtype: str = "auto"
    """Dtype the agent model (and the training reference) is loaded in: ``auto`` (bf16 on a GPU that supports it,
    else float32), ``bf16``, ``fp16`` or ``fp32``. The reference is loaded in it directly, never via a float32 copy."""


@dataclass
class DecodingSettings(Settings):
    HEADING: ClassVar[str] = "agent decoding (how the agent samples its turns)"
    ORDER: ClassVar[int] = 40

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
    kv_reuse: bool = True
    """Keep each episode's KV cache across its turns, so that a turn's prefill covers only the new tokens."""
    rollout_max_batch_tokens: int = 0
    """Cap on one generation batch: the sum over its episodes of (tokens so far + ``max_new_tokens``); more
    episodes than fit are generated in several batches and the caches of those waiting are kept off the
    accelerator, so its memory is bounded whatever the number of episodes (0: no cap)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_whole("max_new_tokens", self.max_new_tokens)
        check_whole("max_seq_len", self.max_seq_len)
        check_whole("rollout_max_batch_tokens", self.rollout_max_batch_tokens, 0)
        check_amount("temperature", self.temperature, optional=False)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1]; got {self.top_p!r}.")


@dataclass
class SystemSettings(Settings):
    HEADING: ClassVar[str] = "system (seed, device, plug-ins)"
    ORDER: ClassVar[int] = 90

    seed: int = 0
    """Random seed: which tasks are drawn, the agent's sampling, and any random initialisation (the same seed
    replays the same run on the same machine; ``train --deterministic`` also makes GPU kernels repeatable)."""
    cpu: bool = False
    """Force the CPU even when an accelerator is present."""
    plugins: str = ""
    """Comma-separated modules or .py files imported first (they register algorithms, backends, ...)."""


@dataclass
class OutputSettings(Settings):
    HEADING: ClassVar[str] = "output (where results go)"
    ORDER: ClassVar[int] = 95

    output_dir: str = "runs/promptr1"
    """Folder the run writes to: checkpoints, logs and the summary (``train``, ``sft``), the report, transcripts
    and chart (``eval``)."""
    overwrite: bool = False
    """Delete an earlier run's results in ``output_dir`` and start afresh. Without it ``train`` and ``sft`` refuse a
    folder holding an earlier run's checkpoints (unless resuming) and ``eval`` resumes from the results there."""
    progress: bool = True
    """Show a console progress bar."""


@dataclass
class RunSettings(OutputSettings, SystemSettings, DecodingSettings, ModelSettings, EpisodeSettings, TaskSettings,
                  BackendSettings):
    """Settings shared by ``promptr1 train``, ``sft``, ``eval``, ``chat`` and ``play``: every group above."""

    #: Settings a command inherits but does not use: not options of its command line (a YAML file shared with
    #: other commands may still hold them).
    IGNORED_SETTINGS: ClassVar[tuple[str, ...]] = ()
    #: Settings whose default comes from another setting's choice (``--algo``): shown as such in ``--help``.
    CHOSEN_DEFAULTS: ClassVar[tuple[str, ...]] = ()
    #: ``--preset NAME`` values, filling the settings the user did not give.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}


# ----------------------------------------------------------------------------- reading the fields


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after a field) read from the source, along the MRO."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
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
                        docs.setdefault(a.target.id, " ".join(b.value.value.split()))
    return docs


def setting_groups(cls: type) -> dict[type, list[str]]:
    """``{group class: [its settings of cls]}`` in ``--help`` order: a setting belongs to the most basic class
    that declares it (a command that only changes a default keeps it in its group)."""
    out: dict[type, list[str]] = {}
    for f in fields(cls):
        owner = next(k for k in reversed(cls.__mro__) if f.name in k.__dict__.get("__annotations__", {}))
        out.setdefault(owner, []).append(f.name)
    return dict(sorted(out.items(), key=lambda kv: getattr(kv[0], "ORDER", 100)))


def ignored_settings(cls: type) -> tuple[str, ...]:
    return tuple(getattr(cls, "IGNORED_SETTINGS", ()))


def plain_text(text: str) -> str:
    """A docstring's reStructuredText markup as plain text, for ``--help``.

    >>> plain_text("``auto`` or :class:`~promptr1.core.settings.RunSettings` (see :func:`load_config`).")
    'auto or RunSettings (see load_config()).'
    """
    import re

    def role(m: re.Match) -> str:
        target = m["target"].split(".")[-1] if m["tilde"] else m["target"]
        return target + ("()" if m["role"] in ("func", "meth") and not target.endswith(")") else "")

    text = re.sub(r":(?P<role>[a-z]+):`(?P<tilde>~?)(?P<target>[^`]+)`", role, text)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.DOTALL)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"\1", text)  # *emphasis*
    return re.sub(r"::(?=\s|$)", ":", text)


def shown_default(cls: type, name: str) -> str:
    """A setting's default as ``--help`` and the configuration reference show it."""
    f = next(f for f in fields(cls) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if default is None:
        return "the algorithm's" if name in getattr(cls, "CHOSEN_DEFAULTS", ()) else "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default)) if default else "none"
    return "empty" if default == "" else str(default)


# ----------------------------------------------------------------------------- the command line, from the fields


def _named(fn: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    fn.__name__ = name  # argparse names the type in its error: "invalid integer value: 'two'"
    return fn


def _boolean(text: str) -> bool:
    s = str(text).strip().lower()
    if s in ("1", "true", "yes", "on", "y"):
        return True
    if s in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError(text)


def _converter(tp: Any) -> tuple[Callable[[str], Any], str, bool]:
    """``(convert one value, metavar, is a list)`` for a field's type."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = True, args[0]
    if typing.get_origin(tp) in (list, Sequence, tuple):
        item = (typing.get_args(tp) or (str,))[0]
        conv, metavar, _ = _converter(item)
        return conv, metavar, True
    base, metavar, name = {bool: (_boolean, "BOOL", "true/false"), int: (int, "INT", "integer"),
                           float: (float, "NUM", "number")}.get(tp, (str, "TEXT", "text"))

    def convert(text: str) -> Any:
        if optional and str(text).strip().lower() in ("none", "null"):
            return None
        return base(text)

    return _named(convert, name), metavar, False


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`ConfigError` (a one-line usage error) instead of printing and exiting."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        raise ConfigError(message)


def _wrap(text: str, width: int) -> str:
    import textwrap

    paras = []
    for para in plain_text(text).strip().split("\n\n"):
        if para.startswith("    "):  # an example: kept as typed
            paras.append("\n".join(line.rstrip() for line in para.splitlines()))
        else:
            paras.append(textwrap.fill(" ".join(para.split()), width, break_on_hyphens=False))
    return "\n\n".join(paras)


def build_parser(cls: type, prog: str, *, positional: str | None = None, about: str = "",
                 epilog: str = "") -> argparse.ArgumentParser:
    """The command line of a settings class: one ``--option`` a field (its docstring and default as help), under
    the heading of the group that declares it, plus ``--config FILE|NAME`` and ``--help``. Every option's default
    is left unset, so the parsed namespace holds exactly what was given."""
    import shutil

    width = max(40, min(120, shutil.get_terminal_size((100, 24)).columns - 1))

    def formatter(prog: str) -> argparse.HelpFormatter:
        return argparse.RawDescriptionHelpFormatter(prog, max_help_position=min(32, width // 3), width=width)

    lead = f"[{positional.upper()} ...] " if positional else ""
    parser = _Parser(prog=f"promptr1 {prog}", usage=f"promptr1 {prog} {lead}[options]",
                     description=_wrap(about, width), epilog=_wrap(epilog, width), add_help=False,
                     allow_abbrev=False, formatter_class=formatter)
    docs, types_, hidden = field_docs(cls), field_types(cls), set(ignored_settings(cls))
    for group_cls, names in setting_groups(cls).items():
        names = [n for n in names if n not in hidden]
        if not names:
            continue
        group = parser.add_argument_group(group_cls.HEADING or "options")
        for name in names:
            convert, metavar, is_list = _converter(types_[name])
            text = f"{plain_text(docs.get(name, ''))} (default: {shown_default(cls, name)})".replace("%", "%%")
            kwargs: dict[str, Any] = {"nargs": "+"} if is_list else {}
            if types_[name] is bool:
                kwargs = {"nargs": "?", "const": True}
            group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=convert, metavar=metavar,
                               default=argparse.SUPPRESS, help=text, **kwargs)
    general = parser.add_argument_group("general")
    if positional:
        convert, metavar, is_list = _converter(types_[positional])
        general.add_argument("_" + positional, nargs="*" if is_list else "?", type=convert,
                             default=argparse.SUPPRESS, metavar=positional.upper(),
                             help=f"Leading values are --{positional.replace('_', '-')}.")
    general.add_argument("--config", metavar="FILE|NAME", default=argparse.SUPPRESS,
                         help=f"A YAML file of these options (underscores or dashes), or a bundled config by name: "
                              f"{', '.join(bundled_configs()) or 'none'}. Options on the command line win.")
    general.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    return parser


def _suggest(cls: type, key: str, options: Sequence[str]) -> str:
    """`` Did you mean '--lr'?`` for an unknown option or YAML key: a name another tool uses for a setting (a
    field's ``metadata["aka"]``, e.g. ``learning_rate``), else the closest option."""
    name = key.lstrip("-").replace("-", "_")
    for f in fields(cls):
        if name in f.metadata.get("aka", ()):
            return f" Did you mean '--{f.name.replace('_', '-')}'?"
    hint = difflib.get_close_matches(f"--{name.replace('_', '-')}", options, n=1)
    return f" Did you mean '{hint[0]}'?" if hint else ""


def _unknown(cls: type, token: str, prog: str, options: Sequence[str]) -> ConfigError:
    name = token.split("=", 1)[0]
    if not name.startswith("-"):
        return ConfigError(f"unexpected argument {token!r}: options are written --name value.")
    if name.lstrip("-").replace("-", "_") in ignored_settings(cls):
        return ConfigError(f"option '{name}' does not apply to promptr1 {prog}: drop it ('promptr1 {prog} --help' "
                           f"lists the options it takes).")
    return ConfigError(f"unknown option '{name}'.{_suggest(cls, name, options)} (--help lists the options)")


def resolve_config(name: str) -> pathlib.Path:
    """A ``--config`` value as a file: the path itself, else a bundled config of that name."""
    path = pathlib.Path(name)
    if path.is_file():
        return path
    bundled = bundled_config(name)
    if bundled is None:
        raise ConfigError(f"--config {name!r}: no such file, and no bundled config of that name (one of "
                          f"{', '.join(bundled_configs())}).")
    return bundled


def _read_yaml(cls: type, path: pathlib.Path, options: Sequence[str], strict: bool) -> dict[str, Any]:
    """A YAML file's settings, converted like options. Malformed YAML, a key that is no setting, or a bad value is
    a :class:`ConfigError` naming the file (and the line, where YAML says)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}).") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of setting: value; got {type(data).__name__}.")
    types_ = field_types(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in types_:
            if strict:
                raise ConfigError(f"{path}: unknown setting {str(key)!r}.{_suggest(cls, name, options)}")
            continue
        convert, _, is_list = _converter(types_[name])
        try:
            if is_list:
                items = [] if value is None else value if isinstance(value, list) else [value]
                out[name] = _split_commas([convert(str(v)) for v in items], types_[name])
            else:
                out[name] = None if value is None else convert(str(value))
        except ValueError:
            raise ConfigError(f"{path}: {key}: expected a {convert.__name__} value, got {value!r}.") from None
    return out


def _split_commas(values: list[Any], tp: Any) -> list[Any]:
    """``a,b`` in a list of texts is two entries."""
    if typing.get_args(tp)[:1] != (str,):
        return values
    return [part.strip() for v in values for part in str(v).split(",") if part.strip()]


@dataclass
class ParsedSettings:
    """A command line parsed: the settings, what they started from, and what the user changed from that."""

    settings: Any
    base: str
    """What the run started from: ``the defaults``, ``bundled config 'NAME'`` or ``config file PATH``."""
    changes: dict[str, tuple[Any, Any]]
    """``{setting: (value in the base, value of the run)}`` for every setting that differs from the base."""

    def describe(self) -> str:
        """One line: ``settings: bundled config 'quickstart', with lr=1e-05 (was 2e-06)``."""
        if not self.changes:
            return f"settings: {self.base}, unchanged"
        diffs = ", ".join(f"{k}={_show(v)} (was {_show(b)})" for k, (b, v) in self.changes.items())
        return f"settings: {self.base}, with {diffs}"


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _normalise(argv: Sequence[str]) -> list[str]:
    """``--key_name`` is ``--key-name`` (YAML keys take either)."""
    out = []
    for tok in argv:
        if tok.startswith("--") and "_" in tok.split("=", 1)[0]:
            head, sep, rest = tok.partition("=")
            tok = head.replace("_", "-") + sep + rest
        out.append(tok)
    return out


def parse_settings(cls: type[C], argv: Sequence[str], prog: str, *, base: str | None = None,
                   positional: str | None = None, strict: bool = True, about: str = "",
                   epilog: str = "") -> ParsedSettings:
    """Parse a command line into ``cls``: the defaults, then the YAML file of ``--config`` (else the bundled
    config ``base``, when given), then the options given. Raises :class:`ConfigError` for anything it cannot
    accept; ``--help`` prints the help and raises ``SystemExit(0)``."""
    parser = build_parser(cls, prog, positional=positional, about=about, epilog=epilog)
    options = [a for action in parser._actions for a in action.option_strings]
    ns, extra = parser.parse_known_args(_normalise(argv))
    if extra:
        raise _unknown(cls, extra[0], prog, options)
    given = vars(ns)
    name = given.pop("config", None) or base
    yaml_values: dict[str, Any] = {}
    if name:
        path = resolve_config(name)
        yaml_values = _read_yaml(cls, path, options, strict)
        where = f"bundled config '{path.stem}'" if path == bundled_config(path.stem) else f"config file {path}"
    else:
        where = "the defaults"
    types_ = field_types(cls)
    lead = given.pop("_" + positional, None) if positional else None
    if lead:  # leading values (eval's task files, chat's question) are the positional setting's
        if positional in given:
            raise ConfigError(f"give {positional} either first, as arguments, or with --{positional.replace('_', '-')}, "
                              f"not both.")
        given[positional] = lead
    for key, value in list(given.items()):
        if isinstance(value, list):
            given[key] = _split_commas(value, types_[key])
    settings = _build(cls, {**yaml_values, **given})
    after = dataclasses.asdict(settings)
    try:
        before = dataclasses.asdict(_build(cls, yaml_values))
    except ConfigError:  # the file alone is not a whole config: count every value given as a change
        before = {k: None for k in after}
    changes = {k: (before[k], after[k]) for k in after if before[k] != after[k]}
    return ParsedSettings(settings, where, changes)


def _build(cls: type[C], values: dict[str, Any]) -> C:
    values = dict(values)
    presets = getattr(cls, "PRESETS", {})
    if values.get("preset"):
        if values["preset"] not in presets:
            from promptr1.core.registry import did_you_mean

            raise ConfigError(did_you_mean("preset", values["preset"], sorted(presets)))
        for key, value in presets[values["preset"]].items():
            values.setdefault(key, value)  # a setting the user gave wins over the preset
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = (), *,
                strict: bool = True) -> C:
    """Build ``cls`` from its defaults, then a YAML file (if given), then ``--key value`` overrides (the Python
    face of :func:`parse_settings`). With ``strict=False`` the file's keys that are not settings of ``cls`` are
    skipped (a config written for another command)."""
    argv = [*(["--config", str(path)] if path else []), *overrides]
    return parse_settings(cls, argv, cls.__name__, strict=strict).settings


def bundled_config(name: str) -> pathlib.Path | None:
    """Path of a config shipped in ``promptr1/configs`` (``quickstart`` -> quickstart.yaml), if any."""
    from importlib import resources

    stem = name[:-5] if name.endswith(".yaml") else name
    try:
        p = resources.files("promptr1") / "configs" / f"{stem}.yaml"
    except (ModuleNotFoundError, TypeError):
        return None
    return pathlib.Path(str(p)) if p.is_file() else None


def bundled_configs() -> list[str]:
    """Names of the configs shipped in ``promptr1/configs``."""
    from importlib import resources

    try:
        folder = resources.files("promptr1") / "configs"
        return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    except (ModuleNotFoundError, TypeError, OSError):
        return []


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain dict (for YAML dumps and TensorBoard hparams)."""
    return dataclasses.asdict(cfg)
