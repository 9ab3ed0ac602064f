"""The evaluation commands' configs: :class:`EvalConfig` (``promptr1 eval``) and :class:`ChatConfig` (``promptr1 chat``).

Both extend :class:`promptr1.core.settings.RunSettings`, which declares the settings every command shares
once (agent ``model``, ``tasks``, ``env_llm``, the episode: ``max_turns``, ``max_response_chars``,
``reward_variant``, env sampling; agent decoding: ``max_new_tokens``, ``max_seq_len``,
``temperature``, ``top_p``; ``seed``, ``cpu``, ``output_dir``, ``plugins``, ``progress``). Only
what is specific to evaluation is declared here.

>>> from promptr1.core.settings import load_config
>>> cfg = load_config(EvalConfig, overrides=["--methods", "direct", "agent", "--model", "tiny",
...                                          "--transfer-env-llms", "echo"])
>>> cfg.env_llms, cfg.methods
(['sim', 'echo'], ['direct', 'agent'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from promptr1.core.settings import RunSettings

from .methods import parse_method

__all__ = ["ChatConfig", "EvalConfig", "EPISODE_SETTINGS"]

#: Settings besides the episode's (:class:`~promptr1.core.settings.EpisodeSettings`) that shape an episode or its
#: score: a resumed evaluation must use the same values as the run it resumes (see :meth:`EvalConfig.episode_settings`).
EPISODE_SETTINGS = ("split", "max_new_tokens", "max_seq_len", "temperature", "top_p", "repetition_penalty",
                    "embedder", "seed", "task_type", "metrics")


@dataclass
class EvalConfig(RunSettings):
    """``promptr1 eval``: datasets × methods × environment LLMs, with budget, resume and a report.

    Every task source in ``tasks`` is a dataset of the report. Outputs go to ``output_dir``.
    """

    #: ``--preset NAME`` fills the settings the user did not give (an explicit value always wins).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # The official evaluation scripts (batch_inference.py, vllm_infer/config.py): agent at temperature 0.7,
        # top-p 0.8, no repetition penalty (1.05 is defined there but never sent), up to 8,192 tokens a turn and
        # 10 turns; replies cut at 8,192 characters; the large LLM gets no temperature and no token limit and an
        # empty message for a reply whose JSON was cut; the agent side of those scripts (reference-eval framing:
        # plain-text prompts wrapped into the tool call, one user message, fixed out-of-turns prediction, the
        # context full once characters / 4 + 8,192 exceed 40,960, the model's context, which max_seq_len keeps).
        "reference": {"temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.0, "max_new_tokens": 8192,
                      "max_turns": 10, "max_seq_len": 40960, "env_max_tokens": 0, "env_temperature": None,
                      "max_response_chars": 8192, "framing": "reference-eval", "env_history": "reference",
                      "metrics": "reference"},  # scored as its eval_scores.py scores
    }

    HEADING: ClassVar[str] = "evaluation (methods, datasets, scoring)"
    ORDER: ClassVar[int] = 60

    temperature: float = 0.0  # greedy, so that a score is reproducible (the reference: 0.7, --preset reference)
    output_dir: str = "runs/eval"
    preset: str = ""
    """``reference``: the official evaluation scripts' settings (agent temperature 0.7, top-p 0.8, no repetition
    penalty, 8,192 tokens a turn, 10 turns, replies cut at 8,192 characters, no env temperature or token limit,
    ``framing: reference-eval``, ``env_history: reference``, a context full at characters / 4 + 8,192 > 40,960) for
    every setting you do not give. Its system messages stay ours: give the reference's with ``--agent-system-prompt
    @FILE`` and ``--env-system-prompt @FILE``."""
    methods: list[str] = field(default_factory=lambda: ["direct", "cot", "agent"])
    """``direct`` (the env LLM alone), ``cot`` (the env LLM asked to reason step by step), ``agent`` (the
    ``--model`` agent in front of the env LLM), ``agent:MODEL`` (another agent), each optionally labelled
    ``LABEL=METHOD`` (e.g. ``trained=agent:runs/x``). Baselines and agents in one run (the paper's table)."""
    transfer_env_llms: list[str] = field(default_factory=list)
    """More env LLMs: every method also runs against each, giving the transfer rows (the paper's
    plug-and-play claim: the same agent in front of a large LLM it was not trained with)."""
    task_type: list[str] = field(default_factory=list)
    """``NAME=TYPE`` entries (``TYPE``: qa, math or text; ``NAME``: a dataset's name, its file stem) that set a
    dataset's task type; others are inferred from evidence, which the report prints."""
    split: str = "test"
    """Split of named task sources (``synthetic``); files are read whole (held out: test)."""
    limit: int | None = None
    """At most this many questions per dataset (the first ones); None: all."""
    batch_size: int = 8
    """Agent episodes played together: one rollout batch, generated together and in flight together."""
    concurrency: int = 16
    """Env-LLM calls of the direct/CoT baselines in flight at once (the backend's own limiter still applies)."""
    metrics: str = "ours"
    """How predictions are scored: ``ours`` (an empty prediction scores 0 on every metric; math EM also accepts an
    equal number: ``30.0``, ``\\boxed{30}``, ``1/2`` = ``0.5``) or ``reference`` (the official ``eval_scores.py``
    exactly: SM and SSim 1 for an empty prediction, F1 1 when both sides normalise to nothing, math EM on
    normalised text only). ``--preset reference`` sets ``reference``."""
    embedder: str = "minilm"
    """SSim embedder: ``minilm`` (the paper's all-MiniLM-L6-v2, offline) or ``hashing`` (fast, for tests)."""
    chart: bool = True
    """Write ``chart.png`` (matplotlib)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tasks:
            raise ValueError("EvalConfig needs at least one task source (--tasks FILE ... or positional files).")
        if not self.methods:
            raise ValueError("EvalConfig needs at least one method (--methods direct cot agent).")
        labels = [parse_method(m, self.model).label for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two methods share a label in {self.methods}; give them labels: 'name=agent:PATH'.")
        if len(set(self.env_llms)) != len(self.env_llms):
            raise ValueError(f"env LLMs repeat: env_llm={self.env_llm!r}, transfer_env_llms={self.transfer_env_llms}.")
        for name in ("concurrency", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}.")
        self.task_types()  # NAME=TYPE entries are checked now
        from promptr1.rewards.metrics import METRIC_SETS

        METRIC_SETS[self.metrics]  # an unknown name: "unknown metric set ... Did you mean ...?"
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {self.limit!r}.")

    def episode_settings(self) -> dict[str, Any]:
        """Everything that shapes an episode or its score: the env's settings (turns, reply length, reward
        variant and answer metric, env sampling) and :data:`EPISODE_SETTINGS`."""
        import dataclasses

        from promptr1.core.settings import EpisodeSettings

        return {**dataclasses.asdict(EpisodeSettings.pick(self)), "sampling": self.env_sampling(),
                "env_system_prompt": self.env_system_prompt, "env_models": self.env_models,
                "env_model_prices": self.env_model_prices, **{k: getattr(self, k) for k in EPISODE_SETTINGS}}

    def task_types(self) -> dict[str, str]:
        """``task_type`` as ``{dataset name: type}``."""
        from promptr1.envs.task_types import TASK_TYPES

        out = {}
        for entry in self.task_type:
            name, sep, kind = entry.partition("=")
            if not sep or not name.strip() or kind.strip() not in TASK_TYPES:
                raise ValueError(f"task_type entries are NAME=TYPE with TYPE one of {', '.join(TASK_TYPES)} "
                                 f"(e.g. --task-type mydata=math); got {entry!r}.")
            out[name.strip()] = kind.strip()
        return out

    @property
    def env_llms(self) -> list[str]:
        """The run's env LLM (its label: with ``env_models``, the models) followed by the transfer env LLMs."""
        return [self.env_llm_label(), *self.transfer_env_llms]


@dataclass
class ChatConfig(RunSettings):
    """``promptr1 chat "QUESTION"``: one question, the agent's multi-turn transcript and its answer."""

    #: Shared settings one question does not use (no task files, no score, nothing written, one episode): left out
    #: of ``promptr1 chat --help`` and refused on its command line.
    IGNORED_SETTINGS: ClassVar[tuple[str, ...]] = (
        "tasks", "reward_variant", "answer_metric", "rollout_max_batch_tokens", "output_dir", "overwrite",
        "progress",
    )
    HEADING: ClassVar[str] = "question"
    ORDER: ClassVar[int] = 5

    question: str = ""
    """The question to ask (or give it as the first argument)."""
    temperature: float = 0.0  # greedy, as eval: the same question gives the same transcript
