"""PromptCollabEnv inside TRL's ``GRPOTrainer``: a ``rollout_func``, a reward function, a dataset adapter.

TRL (``pip install 'prompt-r1[trl]'``) owns the optimisation: GRPO/DAPO/Dr.GRPO losses, the reference model,
vLLM weight sync, DeepSpeed/FSDP through ``accelerate launch``. This module plays each prompt TRL hands
out as a full multi-turn :class:`~promptr1.envs.collab_env.PromptCollabEnv` episode with our token-level
rollout (:func:`promptr1.agents.rollout.run_episodes`: the same chat framing, stop strings and
sampler as our own trainer) and returns it in the shape TRL's ``rollout_func`` contract asks for::

    from trl import GRPOConfig, GRPOTrainer
    from promptr1.envs.tasks import load_tasks
    from promptr1.integrations.trl import env_reward, make_rollout_func, tasks_to_dataset

    tasks = load_tasks("synthetic")
    env_kwargs = {"max_turns": 5}  # PromptCollabEnv settings: the same for the dataset and the rollout
    trainer = GRPOTrainer(model="HuggingFaceTB/SmolLM2-135M-Instruct", args=GRPOConfig(...),
                          train_dataset=tasks_to_dataset(tasks, env_kwargs=env_kwargs),
                          rollout_func=make_rollout_func(tasks, env_llm="openai:gpt-4o-mini", env_kwargs=env_kwargs),
                          reward_funcs=[env_reward])

What TRL 1.16 receives from the rollout function, one row per prompt it handed out (TRL has already
repeated each prompt ``num_generations`` times):

``prompt_ids``
    the opening chat (system + question), rendered by the tokenizer's own template;
``completion_ids``
    everything after it: every agent turn *and* every framed env-LLM reply, exactly the token ids
    of our :class:`~promptr1.agents.rollout.Episode` (sampled ids kept, replies tokenized once);
``logprobs``
    the sampler's per-token log-probs (0.0 on reply tokens, which are masked);
``env_mask``
    1 on agent tokens, 0 on env-reply/template tokens. TRL pops this key and multiplies it into
    its loss mask (``completion_mask * tool_mask``), so reply tokens get no loss, no KL, and do not
    count in the token normaliser. Episodes whose env LLM failed get an all-zero mask;
``episode_reward``, ``env_error``, ``reward_components``, ``episode_info``
    extra fields; TRL hands them to every reward function as keyword arguments.

:func:`env_reward` returns ``episode_reward``, or ``None`` for an episode with ``env_error``: TRL
1.16 turns ``None`` into NaN and, when every reward function says NaN for a row, leaves the row out
of its group's mean and std and sets its advantage to 0, which is our own trainer's "env failures
leave their group". The zeroed ``env_mask`` also keeps the row out of the KL term and the token
count, as our trainer's ``sample_mask`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

TRL_INSTALL_HINT = "pip install 'prompt-r1[trl]'"

try:
    import trl as _trl
except ImportError as exc:  # pragma: no cover - exercised by a test that hides trl
    raise ImportError(
        f"promptr1.integrations.trl needs TRL, which is not installed ({exc}). Install it with "
        f"`{TRL_INSTALL_HINT}`."
    ) from None

import torch

from promptr1.agents.rollout import (
    ChatFramer,
    Episode,
    RolloutConfig,
    SampledTurn,
    run_episodes,
    stop_strings_for,
)
from promptr1.agents.episode import TRUNCATED_REWARD_MODES, ends_on_context, training_reward
from promptr1.agents.seeding import derived_seed
from promptr1.core.settings import RunSettings
from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.tasks import Task, load_tasks
from promptr1.llm_backends import BaseBackend, Completion, EnvLLMError
from promptr1.core.tags import STOP_STRINGS

__all__ = [
    "TRL_INSTALL_HINT",
    "PromptR1Rollout",
    "TaskIndex",
    "VLLMTurnSampler",
    "env_reward",
    "episode_metrics",
    "episodes_to_trl",
    "make_rollout_func",
    "skip_env_errors",
    "tasks_to_dataset",
]

TRL_VERSION = getattr(_trl, "__version__", "0")
#: The TRL version this module was written and tested against (its rollout_func contract is experimental).
TESTED_TRL = "1.16"


def _older_than_tested(version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) < Version(TESTED_TRL)
    except InvalidVersion:  # pragma: no cover - a development build: say nothing
        return False


if _older_than_tested(TRL_VERSION):
    warnings.warn(
        f"promptr1.integrations.trl was tested with TRL {TESTED_TRL}; TRL {TRL_VERSION} is installed and its "
        f"rollout_func contract may differ. Upgrade with `pip install 'trl>={TESTED_TRL}'`.", UserWarning, stacklevel=2)

#: Tokens an episode, prompt included: the same default as every command's ``max_seq_len`` (the reference trains
#: with 8,192: pass ``max_seq_len=8192`` for its recipe).
DEFAULT_MAX_SEQ_LEN = RunSettings.max_seq_len


# ----------------------------------------------------------------------------- data


def _as_tasks(source: Any, split: str, task_type: str | None) -> list[Task]:
    return list(load_tasks(source, split=split, task_type=task_type))


class _NoCalls(BaseBackend):
    """An env LLM for envs that only render opening chats (``reset``); a call is a bug."""

    name = "none"

    def complete(self, messages: Any, **sampling: Any) -> Completion:
        raise EnvLLMError("this env only renders prompts; it has no env LLM", kind="error")


def tasks_to_dataset(
    source: Any = "synthetic",
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    split: str = "train",
    task_type: str | None = None,
) -> Any:
    """A ``datasets.Dataset`` of our tasks in the form ``GRPOTrainer`` wants.

    ``source`` is anything :func:`promptr1.envs.tasks.load_tasks` takes: ``"synthetic"``,
    ``"synthetic:test"``, a ``.parquet`` file in the official schema, a ``.jsonl`` file with
    ``question``/``answers``, or a list of :class:`Task`. Columns:

    ``prompt``
        the chat the agent opens with, rendered by :class:`PromptCollabEnv` itself with ``env_kwargs``
        (its framing's system message, then ``"Question: " + q + "\n" + instruction``); pass the
        ``env_kwargs`` the rollout uses. The user message also carries ``task_id``: TRL hands a
        ``rollout_func`` the prompts only, so that is how the rollout finds the task back (chat templates
        ignore the extra key);
    ``task_id``, ``data_source``, ``ability``
        per-row metadata; TRL passes them on to reward functions.
    """
    try:
        from datasets import Dataset
    except ImportError:  # pragma: no cover - datasets comes with trl
        raise ImportError(f"tasks_to_dataset needs the `datasets` package; install it with `{TRL_INSTALL_HINT}`.") from None
    tasks = _as_tasks(source, split, task_type)
    TaskIndex(tasks)  # fails now, not mid-training, on ids that name two different tasks
    env = PromptCollabEnv(task=tasks, env_llm=_NoCalls(), **dict(env_kwargs or {}))
    prompts, ids, sources, abilities = [], [], [], []
    for t in tasks:
        _, info = env.reset(options={"task": t})
        chat = [{"role": m["role"], "content": m["content"], "task_id": None} for m in info["messages"]]
        chat[-1]["task_id"] = t.id or None
        prompts.append(chat)
        ids.append(t.id)
        sources.append(t.data_source)
        abilities.append(t.ability)
    return Dataset.from_dict({"prompt": prompts, "task_id": ids, "data_source": sources, "ability": abilities})


class TaskIndex:
    """Finds the :class:`Task` behind a prompt TRL hands the rollout.

    By the ``task_id`` key that :func:`tasks_to_dataset` puts on the user message, else by the text of
    the last user message (``task.prompt``), so a dataset built another way works if its prompts are
    the tasks' prompts.
    """

    def __init__(self, tasks: Sequence[Task]) -> None:
        if len(tasks) == 0:
            raise ValueError("TaskIndex needs at least one task; got none.")
        self.by_id: dict[str, Task] = {}
        self.by_prompt: dict[str, list[Task]] = {}
        for t in tasks:
            if not isinstance(t, Task):
                raise TypeError(f"expected promptr1 Task objects, got {type(t).__name__}.")
            if t.id:
                prev = self.by_id.get(t.id)
                if prev is not None and prev != t:
                    raise ValueError(
                        f"two different tasks share the id {t.id!r} (e.g. two files with the same name); "
                        "give them distinct ids before building the dataset and the rollout."
                    )
                self.by_id[t.id] = t
            self.by_prompt.setdefault(t.prompt, []).append(t)

    def __len__(self) -> int:
        return len(self.by_id) or sum(len(v) for v in self.by_prompt.values())

    def find(self, prompt: Any) -> Task:
        """The task of one prompt: a chat (list of messages) or the user text itself."""
        if isinstance(prompt, str):
            text, task_id = prompt, None
        else:
            messages = [m for m in prompt if isinstance(m, Mapping)]
            ids = [m.get("task_id") for m in messages if m.get("task_id")]
            task_id = ids[-1] if ids else None
            users = [m for m in messages if m.get("role") == "user"]
            text = users[-1].get("content") if users else None
        if task_id is not None:
            task = self.by_id.get(str(task_id))
            if task is None:
                raise KeyError(
                    f"the prompt names task_id {task_id!r}, which is not among the rollout's {len(self)} tasks; "
                    "build the dataset and make_rollout_func(...) from the same tasks."
                )
            return task
        found = self.by_prompt.get(text) if isinstance(text, str) else None
        if not found:
            head = (text or "")[:80]
            raise KeyError(
                f"no task has the prompt {head!r}...; expected the dataset of tasks_to_dataset(tasks) and "
                "make_rollout_func(tasks) built from the same tasks (or prompts whose last user message is "
                "a task's prompt)."
            )
        if len({t.answers for t in found}) > 1:
            raise KeyError(
                f"{len(found)} tasks share the prompt {text[:80]!r}... with different gold answers; build the "
                "dataset with tasks_to_dataset(), which tags each prompt with its task_id."
            )
        return found[0]


# ----------------------------------------------------------------------------- TRL's fields


def episodes_to_trl(episodes: Sequence[Episode], *, drop_env_errors: bool = True,
                    truncated_reward: str = "ours") -> dict[str, list]:
    """Our episodes as the dict TRL's ``rollout_func`` returns (see the module docstring).

    ``prompt_ids + completion_ids`` is ``Episode.ids``; ``[0] * len(prompt_ids) + env_mask`` is
    ``Episode.mask`` (all zeros for an env-error episode when ``drop_env_errors``). ``episode_reward`` is the
    training signal (:func:`promptr1.agents.episode.training_reward` under ``truncated_reward``);
    ``episode_info["reward"]`` the reward function's value.
    """
    out: dict[str, list] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask",
                                             "episode_reward", "env_error", "reward_components", "episode_info")}
    for ep in episodes:
        p = ep.prompt_len
        mask = list(ep.mask[p:])
        if drop_env_errors and ep.env_error is not None:
            mask = [0] * len(mask)
        out["prompt_ids"].append(list(ep.ids[:p]))
        out["completion_ids"].append(list(ep.ids[p:]))
        out["logprobs"].append([float(x) for x in ep.logp[p:]])
        out["env_mask"].append(mask)
        out["episode_reward"].append(training_reward(ep, truncated_reward))
        out["env_error"].append(ep.env_error)
        out["reward_components"].append(dict(ep.components))
        out["episode_info"].append({
            "task_id": getattr(ep.task, "id", ""),
            "turns": ep.turns,
            "terminated": ep.terminated,
            "truncated": ep.truncated,
            "overflow": ep.overflow,
            "masked_end": ends_on_context(ep),
            "reward": float(ep.reward),
            "action_tokens": ep.num_action_tokens,
            "seq_len": len(ep.ids),
            **{k: v for k, v in ep.episode_stats.items() if k.startswith("env_llm_")},
        })
    return out


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def episode_metrics(
    episode_reward: Sequence[float],
    env_error: Sequence[str | None],
    reward_components: Sequence[Mapping[str, Any]] | None = None,
    episode_info: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, float]:
    """The metrics our trainer logs for a batch of episodes, under the same names.

    ``reward/*`` (over episodes without an env error), ``env_llm/*``, ``rollout/*``.

    >>> m = episode_metrics([1.0, -1.0, 0.0], [None, None, "timeout: t"],
    ...                     [{"total": 1.0, "format": 1.0, "f1": 1.0}, {"total": -1.0, "format": 0.0, "f1": 0.0}, {}])
    >>> m["reward/mean"], m["reward/format"], m["reward/format_rate"], m["env_llm/error_rate"]
    (0.0, 0.5, 0.5, 0.3333333333333333)
    """
    n = len(episode_reward)
    ok = [i for i in range(n) if not env_error[i]]
    r: dict[str, float] = {
        "rollout/episodes": float(n),
        "env_llm/errors": float(n - len(ok)),
        "env_llm/error_rate": (n - len(ok)) / max(n, 1),
    }
    if ok:
        rewards = [float(episode_reward[i]) for i in ok]
        r["reward/mean"] = _mean(rewards)
        r["reward/min"], r["reward/max"] = min(rewards), max(rewards)
    comps: dict[str, list[float]] = {}
    for i in ok:
        for k, v in (reward_components[i] if reward_components else {}).items():
            x = _num(v)
            if x is not None and k != "total":
                comps.setdefault(k, []).append(x)
    for k, v in comps.items():
        r[f"reward/{k}"] = _mean(v)
    if "format" in comps:
        r["reward/format_rate"] = _mean([float(x >= 1.0 - 1e-9) for x in comps["format"]])
    info = list(episode_info or [])
    if info:
        r["rollout/turns_mean"] = _mean([float(e.get("turns", 0)) for e in info])
        r["rollout/terminated_rate"] = _mean([float(bool(e.get("terminated"))) for e in info])
        r["rollout/overflow"] = float(sum(bool(e.get("overflow")) for e in info))
        r["rollout/masked_end_rate"] = _mean([float(bool(e.get("masked_end"))) for e in info])
        r["rollout/action_tokens_mean"] = _mean([float(e.get("action_tokens", 0)) for e in info])
        r["rollout/seq_len_mean"] = _mean([float(e.get("seq_len", 0)) for e in info])
        for key, name in (("env_llm_calls", "calls"), ("env_llm_tokens", "tokens"), ("env_llm_latency_s", "latency_s")):
            vals = [_num(e.get(key)) for e in info]
            vals = [v for v in vals if v is not None]
            if vals:
                r[f"env_llm/{name}"] = _mean(vals) if name == "latency_s" else float(sum(vals))
    return r


def env_reward(
    prompts: Any = None,
    completions: Any = None,
    *,
    episode_reward: Sequence[float] | None = None,
    env_error: Sequence[str | None] | None = None,
    reward_components: Sequence[Mapping[str, Any]] | None = None,
    episode_info: Sequence[Mapping[str, Any]] | None = None,
    log_metric: Callable[[str, float], None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """TRL reward function: the environment's episode reward, ``None`` for an env-error episode.

    Reads the extra fields of :func:`make_rollout_func`'s rollout; logs :func:`episode_metrics`
    through TRL's ``log_metric``. ``None`` (NaN in TRL) drops the episode from its group's
    advantage only when *every* reward function returns ``None`` for it: wrap any other reward
    function with :func:`skip_env_errors`.
    """
    if episode_reward is None:
        raise ValueError(
            "env_reward reads the episode reward that promptr1's rollout_func returns, and got none; pass "
            "GRPOTrainer(rollout_func=make_rollout_func(...), reward_funcs=[env_reward])."
        )
    errors = list(env_error) if env_error is not None else [None] * len(episode_reward)
    if log_metric is not None:
        for name, value in episode_metrics(episode_reward, errors, reward_components, episode_info).items():
            log_metric(name, value)
    return [None if err else float(r) for r, err in zip(episode_reward, errors)]


def skip_env_errors(reward_func: Callable[..., list]) -> Callable[..., list]:
    """Wrap another TRL reward function so that it returns ``None`` for env-error episodes too.

    TRL leaves a row out of its group only when every reward function returns ``None`` for it.
    """

    def wrapped(*args: Any, env_error: Sequence[str | None] | None = None, **kwargs: Any) -> list:
        out = list(reward_func(*args, env_error=env_error, **kwargs))
        if env_error is None:
            return out
        return [None if err else r for r, err in zip(out, env_error)]

    wrapped.__name__ = getattr(reward_func, "__name__", "reward")
    wrapped.__doc__ = reward_func.__doc__
    return wrapped


# ----------------------------------------------------------------------------- generation engines


def _sample_from_vllm_output(token_ids: Sequence[int], logps: Sequence[float | None], tokenizer: Any,
                             stop_strings: Sequence[str], eos_ids: Sequence[int]) -> SampledTurn:
    ids = [int(t) for t in token_ids]
    lps = [float("nan") if x is None else float(x) for x in logps]
    if len(lps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(ids)} tokens but {len(lps)} log-probs; request logprobs=0.")
    if ids and ids[-1] in set(eos_ids):
        stop = "eos"
    elif ids and any(s in tokenizer.decode(ids[-16:]) for s in stop_strings):
        stop = "string"
    else:
        stop = "length"
    return SampledTurn(ids, lps, stop)


def _sampled_logprob(entries: Sequence[Any], token_ids: Sequence[int] | None, token: int) -> float | None:
    """The sampled token's log-prob from one position of vLLM's top-k lists."""
    if token_ids is not None:
        for lp, tid in zip(entries, token_ids):
            if int(tid) == token:
                return lp
    return entries[0] if entries else None


class VLLMTurnSampler:
    """Agent turns from the trainer's vLLM engine, in :func:`~promptr1.agents.rollout.sample_turns`' shape.

    Colocate mode calls ``trainer.vllm_generation.llm.generate`` on this process's prompts only;
    server mode posts them to the TRL vLLM server (``trl vllm-serve``) from every process. Weights are
    synced by TRL before each rollout. Sampling settings (temperature, top-p/k, min-p, repetition
    penalty, ``generation_kwargs``) are TRL's; each turn stops at our stop strings or the end-of-turn
    token and keeps the stop string, as our own sampler does. Log-probs are vLLM's processed ones
    (temperature applied), which TRL's importance-sampling correction compares with the trainer's.

    Not supported (refused with a message): vLLM sleep mode, and colocate mode with
    ``vllm_tensor_parallel_size > 1`` (every rank of a TP group would have to run the same
    generation calls, but multi-turn episodes make different calls on each rank).
    """

    def __init__(self, trainer: Any) -> None:
        vg = getattr(trainer, "vllm_generation", None)
        if vg is None:
            raise ValueError("VLLMTurnSampler needs a GRPOTrainer built with use_vllm=True.")
        if getattr(vg, "enable_sleep_mode", False):
            raise NotImplementedError(
                "vllm_enable_sleep_mode=True is not supported by promptr1's multi-turn rollout (the engine sleeps "
                "between TRL's own generate calls, which this rollout does not use); set vllm_enable_sleep_mode=False."
            )
        self.mode = vg.mode
        if self.mode == "colocate" and getattr(vg, "tensor_parallel_size", 1) > 1:
            raise NotImplementedError(
                "colocated vLLM with vllm_tensor_parallel_size > 1 is not supported by promptr1's multi-turn rollout: "
                "a TP group must issue identical generate calls, and episodes differ per rank. Use vllm_mode='server' "
                "(trl vllm-serve --tensor-parallel-size N) or tensor parallel size 1."
            )
        self.vg = vg
        self._client = None

    def _server_client(self) -> Any:
        if self._client is None:
            client = getattr(self.vg, "vllm_client", None)
            if client is None:  # TRL builds the client on the main process only; other ranks only generate
                from trl.generation.vllm_client import VLLMClient

                base = self.vg.server_base_url or f"http://{self.vg.server_host}:{self.vg.server_port}"
                client = VLLMClient(base_url=base, connection_timeout=self.vg.server_timeout)
            self._client = client
        return self._client

    def __call__(self, model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 stop_strings: Sequence[str] = STOP_STRINGS, eos_token_ids: Sequence[int] | None = None,
                 generator: Any = None) -> list[SampledTurn]:
        vg = self.vg
        eos = list(eos_token_ids or [])
        params: dict[str, Any] = {
            "temperature": temperature, "top_p": top_p, "top_k": vg.top_k or 0,
            "min_p": 0.0 if vg.min_p is None else vg.min_p, "repetition_penalty": repetition_penalty,
            "max_tokens": int(max_new_tokens), "logprobs": 0,
        }
        stops: dict[str, Any] = {"include_stop_str_in_output": True, "stop_token_ids": eos,
                                 "skip_special_tokens": False}
        if stop_strings:
            stops["stop"] = list(stop_strings)
        prompts = [list(map(int, p)) for p in prompts]
        if self.mode == "colocate":
            from vllm import SamplingParams

            sp = SamplingParams(n=1, **params, **stops, **dict(vg.generation_kwargs or {}))
            outputs = vg.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=sp, use_tqdm=False)
            turns = []
            for out in outputs:
                o = out.outputs[0]
                lps = [(d[t].logprob if d is not None and t in d else None) for t, d in zip(o.token_ids, o.logprobs or [])]
                turns.append(_sample_from_vllm_output(o.token_ids, lps, tokenizer, stop_strings, eos))
            return turns
        res = self._server_client().generate(
            prompts=prompts, n=1, **params, generation_kwargs={**stops, **dict(vg.generation_kwargs or {})})
        turns = []
        lp_ids = res.get("logprob_token_ids") or [None] * len(prompts)
        for ids, lps, tids in zip(res["completion_ids"], res["logprobs"], lp_ids):
            per_tok = [_sampled_logprob(e, None if tids is None else tids[j], t) for j, (t, e) in enumerate(zip(ids, lps))]
            turns.append(_sample_from_vllm_output(ids, per_tok, tokenizer, stop_strings, eos))
        return turns




# ----------------------------------------------------------------------------- the rollout function


class PromptR1Rollout:
    """TRL's ``rollout_func``: plays one :class:`PromptCollabEnv` episode per prompt. Build it with
    :func:`make_rollout_func`; call signature ``(prompts, trainer) -> dict`` (TRL's contract).

    After each call, ``last_episodes`` holds the :class:`~promptr1.agents.rollout.Episode` objects
    (transcripts, token ids, components) for inspection or custom logging.
    """

    def __init__(
        self,
        tasks: Any = "synthetic",
        *,
        env_llm: Any = "sim",
        env_kwargs: Mapping[str, Any] | None = None,
        env_factory: Callable[[], Any] | None = None,
        split: str = "train",
        max_new_tokens: int | None = None,
        max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
        stop_strings: Sequence[str] | None = None,
        independent: bool = True,
        drop_env_errors: bool = True,
        sampler: Callable[..., list[SampledTurn]] | None = None,
        seed: int | None = None,
        truncated_reward: str = "ours",
    ) -> None:
        self.tasks = _as_tasks(tasks, split, None)
        self.index = TaskIndex(self.tasks)
        self.env_kwargs = dict(env_kwargs or {})
        self.env_factory = env_factory
        self.env_llm = None
        if env_factory is None:
            from promptr1.llm_backends import make_backend

            # built once, shared by every env (one concurrency budget); a mapping is several env LLMs, used as is
            self.env_llm = env_llm if isinstance(env_llm, Mapping) else make_backend(env_llm)
        self.max_new_tokens = max_new_tokens
        self.max_seq_len = int(max_seq_len)
        if stop_strings is None:  # the env's framing decides where a turn stops
            stop_strings = stop_strings_for(self.env_kwargs.get("framing", "ours"))
        self.stop_strings = tuple(stop_strings)
        self.independent = bool(independent)
        self.drop_env_errors = bool(drop_env_errors)
        if truncated_reward not in TRUNCATED_REWARD_MODES:
            raise ValueError(f"truncated_reward must be one of {', '.join(TRUNCATED_REWARD_MODES)}; "
                             f"got {truncated_reward!r}.")
        self.truncated_reward = truncated_reward
        self.sampler = sampler
        self.seed = seed
        self.envs: list[Any] = []
        self.last_episodes: list[Episode] = []
        self.last_timings: dict[str, float] = {}
        self._framers: dict[int, ChatFramer] = {}
        self._vllm_sampler: VLLMTurnSampler | None = None
        self._checked = False
        self._calls = 0
        self._warned_prompt = False

    # ------------------------------------------------------------------ pieces
    def _envs(self, n: int) -> list[Any]:
        while len(self.envs) < n:
            if self.env_factory is not None:
                self.envs.append(self.env_factory())
            else:
                self.envs.append(PromptCollabEnv(task=self.tasks, env_llm=self.env_llm, **self.env_kwargs))
        return self.envs[:n]

    def _framer(self, tokenizer: Any) -> ChatFramer:
        key = id(tokenizer)
        if key not in self._framers:
            self._framers[key] = ChatFramer(tokenizer)
        return self._framers[key]

    def _check(self, trainer: Any) -> None:
        """Refuse TRL settings this rollout cannot honour, once, with the fix."""
        if self._checked:
            return
        args = trainer.args
        if getattr(args, "mask_truncated_completions", False) and self.stop_strings:
            raise ValueError(
                "mask_truncated_completions=True would mask nearly every episode: TRL calls a completion "
                f"truncated when its last token is not EOS, and agent turns end at {list(self.stop_strings)}. "
                "Set mask_truncated_completions=False; episodes that run out of turns are scored by the env."
            )
        if not getattr(trainer, "use_vllm", False) and self.sampler is None:
            unsupported = {k: getattr(args, k, None) for k in ("top_k", "min_p")}
            bad = {k: v for k, v in unsupported.items() if v not in (None, 0, 0.0, -1)}
            if bad:
                raise ValueError(
                    f"generation settings {bad} are not implemented by promptr1's sampler (temperature, top_p and "
                    "repetition_penalty are); unset them, or generate with vLLM (use_vllm=True)."
                )
            try:
                from trl.distributed import DistributedBackend

                dist = DistributedBackend(trainer.accelerator)
                fsdp, zero3 = dist.is_fsdp, dist.is_zero3
            except (ImportError, AttributeError):  # pragma: no cover - older layouts
                fsdp, zero3 = False, False
            if fsdp or (zero3 and not getattr(args, "ds3_gather_for_generation", True)):
                raise ValueError(
                    "multi-turn generation with the training model under FSDP (or ZeRO-3 without "
                    "ds3_gather_for_generation) would hang: sharded forwards are collective, and each rank plays "
                    "episodes of different lengths. Use use_vllm=True, or DDP / ZeRO-2 / ZeRO-3 with "
                    "ds3_gather_for_generation=True."
                )
        self._checked = True

    def rollout_config(self, trainer: Any) -> RolloutConfig:
        """Our rollout settings for this call: sampling settings come from TRL's args, so that the
        log-probs TRL recomputes (``logits / temperature``) are those of the sampler."""
        args = trainer.args
        per_turn = self.max_new_tokens or getattr(args, "max_completion_length", None) or RolloutConfig.max_new_tokens
        return RolloutConfig(
            max_new_tokens=int(per_turn), max_seq_len=self.max_seq_len,
            temperature=float(getattr(args, "temperature", 1.0)), top_p=float(getattr(args, "top_p", 1.0) or 1.0),
            repetition_penalty=float(getattr(args, "repetition_penalty", 1.0) or 1.0),
            stop_strings=self.stop_strings, independent=self.independent,
        )

    def _warn_if_prompt_differs(self, prompt: Any, episode: Episode) -> None:
        if self._warned_prompt or isinstance(prompt, str):
            return
        given = [(m.get("role"), m.get("content")) for m in prompt if isinstance(m, Mapping)]
        shown = [(m.get("role"), m.get("content")) for m in episode.messages[: len(given)]]
        if given != shown:
            self._warned_prompt = True
            warnings.warn(
                "the dataset's prompt differs from the chat the env opens with (e.g. another framing or system "
                "prompt); the env's chat is what the agent sees and is trained on. Build the dataset with "
                "tasks_to_dataset(tasks, env_kwargs=...) given the rollout's env_kwargs.", UserWarning, stacklevel=3)

    def _play(self, model: Any, tokenizer: Any, envs: list[Any], tasks: list[Task], groups: list[int],
              cfg: RolloutConfig, framer: ChatFramer, generator: Any, sampler: Any) -> list[Episode]:
        timings: dict[str, float] = {}
        self.last_timings = timings

        def play() -> list[Episode]:
            return run_episodes(model, tokenizer, envs, tasks, groups, cfg, framer=framer, generator=generator,
                                timings=timings, sampler=sampler)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return play()
        # Called from inside an event loop (e.g. a notebook): play in a worker thread with its own loop.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(play).result()

    @contextlib.contextmanager
    def _generation_model(self, trainer: Any) -> Iterator[Any]:
        """The training model, unwrapped (and gathered under ZeRO-3) for generation, as TRL does."""
        from trl.models.utils import unwrap_model_for_generation

        args = trainer.args
        with unwrap_model_for_generation(
            getattr(trainer, "model_wrapped", trainer.model), trainer.accelerator,
            gather_deepspeed3_params=getattr(args, "ds3_gather_for_generation", True),
            gradient_checkpointing_kwargs=getattr(args, "gradient_checkpointing_kwargs", None),
        ) as unwrapped, trainer.accelerator.autocast():
            yield unwrapped

    def close(self) -> None:
        """Close the envs and the shared env LLM (its connections, threads)."""
        for env in self.envs:
            close = getattr(env, "close", None)
            if callable(close) and self.env_llm is None:
                close()  # envs of an env_factory own their backends
        close = getattr(self.env_llm, "close", None)
        if callable(close):
            close()
        self.envs = []

    def __repr__(self) -> str:
        return (f"PromptR1Rollout(tasks={len(self.tasks)}, env_llm={getattr(self.env_llm, 'name', 'env_factory')!r}, "
                f"max_seq_len={self.max_seq_len})")

    # ------------------------------------------------------------------ TRL's entry point
    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        self._check(trainer)
        tokenizer = trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
        framer = self._framer(tokenizer)
        cfg = self.rollout_config(trainer)
        tasks = [self.index.find(p) for p in prompts]
        groups, g = [], -1
        for i, p in enumerate(prompts):  # TRL repeats each prompt num_generations times, consecutively
            g += int(i == 0 or p != prompts[i - 1])
            groups.append(g)
        envs = self._envs(len(tasks))
        rank = trainer.accelerator.process_index
        step = trainer.state.global_step
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, "trl-rollout", step, rank, self._calls))
        self._calls += 1

        sampler = self.sampler
        if sampler is None and getattr(trainer, "use_vllm", False):
            if self._vllm_sampler is None:
                self._vllm_sampler = VLLMTurnSampler(trainer)
            episodes = self._play(None, tokenizer, envs, tasks, groups, cfg, framer, generator, self._vllm_sampler)
        else:
            with self._generation_model(trainer) as model:
                episodes = self._play(model, tokenizer, envs, tasks, groups, cfg, framer, generator, sampler)
        if episodes:
            self._warn_if_prompt_differs(prompts[0], episodes[0])
        self.last_episodes = episodes
        return episodes_to_trl(episodes, drop_env_errors=self.drop_env_errors, truncated_reward=self.truncated_reward)


def make_rollout_func(tasks: Any = "synthetic", **kwargs: Any) -> PromptR1Rollout:
    """Build the ``rollout_func`` for ``trl.GRPOTrainer``: one :class:`PromptCollabEnv` episode per prompt.

    Keyword arguments (those of :class:`PromptR1Rollout`):
        tasks: the tasks the dataset's prompts come from (anything :func:`load_tasks` takes; use the
            same source as :func:`tasks_to_dataset`).
        env_llm: the large LLM: a spec (``"sim"``, ``"openai:MODEL"``, ``"hf:ID"``, ...) or an
            ``LLMBackend``; built once and shared by all envs.
        env_kwargs: :class:`PromptCollabEnv` settings (``max_turns``, ``framing``, ``max_response_chars``,
            ``reward_variant``, ``answer_metric``, ``sampling``, ...; the env's defaults for the rest). Give
            :func:`tasks_to_dataset` the same.
        env_factory: a zero-argument callable returning an env (``reset(seed, options={"task": t})`` and
            ``step``/``astep``), instead of :class:`PromptCollabEnv`.
        max_new_tokens: tokens per agent turn (default: TRL's ``max_completion_length``).
        max_seq_len: tokens per episode, prompt included (ref: 8k); an episode that outgrows it ends
            with reward -1, as in our trainer. With vLLM, ``vllm_max_model_length`` must cover it.
        stop_strings: an agent turn ends at one of these (kept) or at the end-of-turn token (default: the
            env framing's: ``</interaction_prompt>``/``</answer>`` for ``ours``, none for ``reference``).
        independent: episodes advance without a per-turn barrier (see ``RolloutConfig``).
        drop_env_errors: give env-error episodes an all-zero ``env_mask`` (no loss, no KL).
        sampler: generate agent turns with this function instead (``sample_turns``' signature); default:
            the trainer's vLLM engine when ``use_vllm``, else the training model.
        seed: seed the sampler per call (derived from seed, step, rank); default: torch's global RNG,
            which TRL seeds from ``args.seed``.
        truncated_reward: ``"ours"`` (the reward function's value) or ``"reference"`` (0 for an episode that ends
            on an env reply, as the official trainer trains it); ``GRPOConfig.truncated_reward``.
    """
    return PromptR1Rollout(tasks, **kwargs)
