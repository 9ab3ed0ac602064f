"""The paper's evaluation: datasets × methods × environment LLMs, with budget, resume and a report.

Methods, all run in the same pass over the same questions:

* ``direct``: the environment LLM alone, one call on the raw question;
* ``cot``: the environment LLM with a chain-of-thought instruction, answer read from a final
  ``Answer:`` line;
* ``agent:MODEL``: an agent policy in front of the environment LLM through
  :class:`~promptr1.envs.collab_env.PromptCollabEnv`, multi-turn. ``MODEL`` is ``smollm2``,
  ``tiny``, an HF id/folder or a training run/checkpoint folder (e.g. the untrained
  ``agent:smollm2`` and the trained ``agent:runs/x/checkpoint-final``);
* any method may carry a label: ``trained=agent:runs/x``.

Every method runs against every ``env_llms`` entry; listing a second environment LLM gives
the transfer rows (the same trained agent in front of a different large LLM, the paper's
plug-and-play claim).

Metrics per task type (:data:`~promptr1.agents.report.METRICS`): EM and F1 for QA, EM with
numeric equivalence for math, SSim for text. An empty prediction scores 0 everywhere.

Outputs in ``output_dir``: ``transcripts.jsonl`` (one record per episode, appended as episodes
finish), ``report.md``, ``chart.png``, ``summary.json``. A re-run with the same ``output_dir``
skips the (dataset, method, env LLM, index) keys already recorded, so a run stopped by
``max_calls``/``max_cost`` (or killed) resumes where it stopped.

Python::

    result = run_evaluation(HarnessConfig(tasks=["hotpot.parquet"], methods=["direct", "agent:smollm2"],
                                          env_llms=["openai:gpt-4o-mini"], output_dir="runs/eval"))
    result.log_to(summary_writer, step)      # TensorBoard (a SummaryWriter or a record(key, value) function)

Command line: :func:`harness_main` (``promptr1 eval`` delegates to it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from promptr1.envs.protocol import parse_turn
from promptr1.envs.tasks import Task, load_tasks
from promptr1.llm_backends import EnvLLMError, LLMBackend, make_backend
from promptr1.rewards import exact_match, extract_answer, numeric_match, token_f1

from .report import (
    METRICS,
    average_rows,
    append_jsonl,
    read_jsonl,
    render_markdown,
    summarize,
    write_chart,
)

__all__ = [
    "COT_INSTRUCTION",
    "AgentPolicy",
    "EvalResult",
    "HFAgentPolicy",
    "HarnessConfig",
    "MethodSpec",
    "ScriptedAgentPolicy",
    "extract_prediction",
    "harness_main",
    "load_agent_policy",
    "parse_method",
    "run_evaluation",
    "score_prediction",
]

#: Our wording of the chain-of-thought baseline's instruction.
COT_INSTRUCTION = (
    "Think step by step and show your reasoning. Then write the final answer alone on the last line, "
    "in the form: Answer: <final answer>"
)

#: Config fields that shape an episode; a resumed run must use the same values.
_EPISODE_FIELDS = (
    "max_turns",
    "max_response_chars",
    "env_temperature",
    "env_max_tokens",
    "agent_max_new_tokens",
    "agent_temperature",
    "embedder",
    "seed",
)


# ============================================================================= configuration


@dataclass
class HarnessConfig:
    """One evaluation run. Defaults marked (ref) follow the Prompt-R1 paper."""

    tasks: list[str] = field(default_factory=lambda: ["synthetic:test"])
    """Task files (official parquet schema or JSONL with question/answers) or ``synthetic:test``."""
    methods: list[str] = field(default_factory=lambda: ["direct", "cot", "agent:smollm2"])
    """``direct``, ``cot``, ``agent:MODEL``, optionally labelled: ``trained=agent:runs/x``."""
    env_llms: list[str] = field(default_factory=lambda: ["sim"])
    """Environment LLM specs; several give transfer rows (every method runs against each)."""
    output_dir: str = "runs/eval"
    limit: int | None = None
    """At most this many questions per dataset (the first ones); None: all."""
    max_turns: int = 5  # (ref)
    max_response_chars: int = 2048  # (ref)
    env_temperature: float = 0.0
    env_max_tokens: int = 512
    agent_max_new_tokens: int = 256
    agent_temperature: float = 0.0
    """0 = greedy decoding."""
    agent_batch_size: int = 8
    concurrency: int = 16
    """Episodes in flight at once (the backend's own limiter still applies)."""
    max_calls: int | None = None
    """Stop cleanly after this many (uncached) env-LLM calls; partial results are kept."""
    max_cost: float | None = None
    """Stop cleanly once env-LLM cost reaches this many USD (calls in flight may add a little)."""
    cache: str | None = None
    """Record/replay cache file for env-LLM calls (:mod:`promptr1.llm_backends.cache`)."""
    cache_mode: str = "replay-or-record"
    embedder: str = "minilm"
    """SSim embedder: ``minilm`` (the paper's all-MiniLM-L6-v2) or ``hashing`` (fast, for tests)."""
    seed: int = 0
    device: str | None = None
    """Device for HF agent policies (default: cuda if available, else cpu)."""
    chart: bool = True
    overwrite: bool = False
    """Delete earlier transcripts in ``output_dir`` instead of resuming from them."""

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        if isinstance(self.methods, str):
            self.methods = [self.methods]
        if isinstance(self.env_llms, str):
            self.env_llms = [self.env_llms]
        if not self.tasks or not self.methods or not self.env_llms:
            raise ValueError("HarnessConfig needs at least one task file, one method and one env LLM.")
        for name in ("max_turns", "concurrency", "agent_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}.")
        for m in self.methods:
            parse_method(m)


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method: ``kind`` in direct/cot/agent, ``model`` for agents, ``label`` for reports."""

    kind: str
    model: str = ""
    label: str = ""


def parse_method(text: str) -> MethodSpec:
    """Parse ``direct``, ``cot``, ``agent:MODEL`` or ``LABEL=METHOD``.

    >>> parse_method("agent:runs/x/checkpoint-final")
    MethodSpec(kind='agent', model='runs/x/checkpoint-final', label='agent:runs/x/checkpoint-final')
    >>> parse_method("trained=agent:runs/x").label
    'trained'
    >>> parse_method("cott")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'cott'. Expected 'direct', 'cot' or 'agent:MODEL' ... Did you mean 'cot'?
    """
    label, sep, body = text.partition("=")
    if not sep:
        label, body = "", text
    body = body.strip()
    kind, _, model = body.partition(":")
    if kind in ("direct", "cot") and not model:
        return MethodSpec(kind, "", label or kind)
    if kind == "agent" and model:
        return MethodSpec("agent", model, label or body)
    import difflib

    hint = difflib.get_close_matches(body, ["direct", "cot", "agent:smollm2"], n=1)
    raise ValueError(
        f"unknown method {text!r}. Expected 'direct', 'cot' or 'agent:MODEL' (optionally 'LABEL=...')."
        + (f" Did you mean {hint[0]!r}?" if hint else "")
    )


# ============================================================================= predictions and metrics

_ANSWER_MARK = re.compile(
    r"^[ \t]*\**[ \t]*(?:final[ \t]+)?answer[ \t]*\**[ \t]*[:：]", re.IGNORECASE | re.MULTILINE
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def extract_prediction(reply: str, ability: str, *, cot: bool = False) -> str:
    """The answer in an environment LLM's free-text reply (the direct and CoT baselines).

    ``<answer>`` wins; then (CoT, or any math reply) what follows the last ``Answer:`` mark (to the
    end of its line; to the end of the reply for text tasks); for math, ``\\boxed{}`` or else the
    last number of the last line; otherwise the whole reply (stripped).

    >>> extract_prediction("Paris.", "qa")
    'Paris.'
    >>> extract_prediction("Step 1...\\nAnswer: Paris", "qa", cot=True)
    'Paris'
    >>> extract_prediction("so 12 + 18 = 30 people", "math")
    '30'
    >>> extract_prediction("The total is \\\\boxed{30}.", "math")
    '\\\\boxed{30}'
    """
    tagged = extract_answer(reply)
    if tagged is not None:
        return tagged
    text = reply.strip()
    if cot or ability == "math":
        marks = list(_ANSWER_MARK.finditer(text))
        if marks:  # text answers run to the end of the reply; others end with their line
            rest = text[marks[-1].end() :]
            rest = rest if ability == "text" else rest.split("\n", 1)[0]
            if rest.strip(" *"):
                text = rest.strip(" *\n")
    if ability == "math":
        boxed = text.rfind("\\boxed")
        if boxed >= 0:
            return text[boxed:].rstrip(". ")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        numbers = _NUMBER.findall(last)
        return numbers[-1].rstrip(",") if numbers else last.strip()
    return text


def score_prediction(pred: str, golds: Sequence[str], ability: str, embedder: Any = None) -> dict[str, float]:
    """The paper's metrics for one prediction; an empty prediction scores 0 on all of them.

    >>> score_prediction("The Eiffel Tower", ["Eiffel Tower"], "qa")
    {'em': 1.0, 'f1': 1.0}
    >>> score_prediction("30.0", ["30"], "math")
    {'em': 1.0}
    >>> score_prediction("", ["30"], "math")
    {'em': 0.0}
    """
    names = METRICS.get(ability, METRICS["qa"])
    if not pred.strip():
        return {name: 0.0 for name in names}
    if ability == "text":
        from promptr1.rewards.similarity import ssim

        return {"ssim": ssim(pred, list(golds), embedder=embedder)}
    if ability == "math":
        return {"em": max(numeric_match(pred, golds), exact_match(pred, golds))}
    return {"em": exact_match(pred, golds), "f1": token_f1(pred, golds)}


# ============================================================================= agent policies


@runtime_checkable
class AgentPolicy(Protocol):
    """Writes the agent's next turn for each chat (role/content dicts, as in ``info["messages"]``)."""

    def act(self, batch_of_chats: list[list[dict[str, str]]]) -> list[str]: ...


class ScriptedAgentPolicy:
    """A deterministic agent for tests and demos.

    ``script`` is a function ``chat -> turn`` or a list of turns indexed by the agent's turn
    number (the count of assistant messages so far; the last one repeats).
    :meth:`relay` forwards the question to the environment LLM and answers with its reply.

    >>> p = ScriptedAgentPolicy(["<think>a</think><interaction_prompt>q</interaction_prompt>",
    ...                          "<think>b</think><answer>x</answer>"])
    >>> p.act([[{"role": "user", "content": "Q"}]])[0][-21:]
    '</interaction_prompt>'
    """

    def __init__(self, script: Sequence[str] | Callable[[list[dict[str, str]]], str]) -> None:
        if not callable(script) and len(script) == 0:
            raise ValueError(
                "ScriptedAgentPolicy needs at least one turn, e.g. ['<think>.</think><answer>x</answer>']."
            )
        self.script = script
        self.calls = 0

    def act(self, batch_of_chats: list[list[dict[str, str]]]) -> list[str]:
        self.calls += 1
        out = []
        for chat in batch_of_chats:
            if callable(self.script):
                out.append(self.script(chat))
            else:
                k = sum(1 for m in chat if m["role"] == "assistant")
                out.append(self.script[min(k, len(self.script) - 1)])
        return out

    @classmethod
    def relay(cls) -> ScriptedAgentPolicy:
        """Turn 1 sends the question (the first user message without its instruction); turn 2 answers
        with the env LLM's reply."""

        def step(chat: list[dict[str, str]]) -> str:
            if not any(m["role"] == "assistant" for m in chat):
                from promptr1.envs.tasks import split_prompt

                question, _ = split_prompt(next(m["content"] for m in chat if m["role"] == "user"))
                return f"<think>Ask the expert.</think><interaction_prompt>{question}</interaction_prompt>"
            reply = chat[-1]["content"]
            reply = reply.removeprefix("<interaction_response>").removesuffix("</interaction_response>")
            return f"<think>Use the reply.</think><answer>{reply.strip()}</answer>"

        return cls(step)


def _resolve_model_dir(spec: str) -> str:
    """``smollm2`` / ``tiny`` / a training run folder (its latest checkpoint) / an HF folder or id."""
    if spec == "smollm2":
        from promptr1.llm_backends.smollm2 import smollm2_model_dir

        return str(smollm2_model_dir())
    if spec == "tiny":
        from promptr1.testing.tiny_model import tiny_model_path

        return str(tiny_model_path())
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        try:
            from promptr1.agents.checkpoint import find_latest_checkpoint

            latest = find_latest_checkpoint(path)
        except ImportError:
            latest = None
        if latest is None:
            raise FileNotFoundError(
                f"agent model folder {spec!r} has no config.json and no checkpoint; expected an "
                "HF model folder, a checkpoint-N folder, or a training output_dir."
            )
        return str(latest)
    return spec


class HFAgentPolicy:
    """An agent policy backed by a transformers causal LM (batched, greedy by default).

    ``model``: ``smollm2``, ``tiny``, an HF id or folder, a training run folder (its latest
    checkpoint is used), or an already-loaded model (then pass ``tokenizer``). Each turn is
    generated with the tokenizer's chat template and stops after ``</interaction_prompt>`` or
    ``</answer>`` (or EOS / ``max_new_tokens``).
    """

    stop_strings: tuple[str, ...] = ("</interaction_prompt>", "</answer>")

    def __init__(
        self,
        model: Any = "smollm2",
        tokenizer: Any = None,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, os.PathLike)):
            folder = _resolve_model_dir(os.fspath(model))
            self.name = os.fspath(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        elif tokenizer is None:
            raise TypeError("HFAgentPolicy(model=<loaded model>) needs tokenizer=<its tokenizer>.")
        else:
            self.name = getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"the agent tokenizer of {self.name!r} has no chat template; expected an instruct model."
            )
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.generator_seed = seed
        torch.manual_seed(seed)

    def act(self, batch_of_chats: list[list[dict[str, str]]]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(batch_of_chats), self.batch_size):
            out.extend(self._generate(batch_of_chats[start : start + self.batch_size]))
        return out

    def _generate(self, chats: list[list[dict[str, str]]]) -> list[str]:
        import torch

        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        sampling = (
            {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            if self.temperature > 0
            else {"do_sample": False}
        )
        with torch.no_grad():
            ids = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                stop_strings=list(self.stop_strings),
                tokenizer=self.tokenizer,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        replies = self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [self._cut(r) for r in replies]

    def _cut(self, text: str) -> str:
        ends = [text.find(s) + len(s) for s in self.stop_strings if s in text]
        return text[: min(ends)] if ends else text


def load_agent_policy(spec: str, cfg: HarnessConfig) -> AgentPolicy:
    """An :class:`HFAgentPolicy` for ``agent:MODEL``'s ``MODEL``, with the config's decoding settings."""
    return HFAgentPolicy(
        spec,
        max_new_tokens=cfg.agent_max_new_tokens,
        temperature=cfg.agent_temperature,
        batch_size=cfg.agent_batch_size,
        device=cfg.device,
        seed=cfg.seed,
    )


# ============================================================================= the run


class _Budget:
    """Counts uncached env-LLM calls and cost; refuses new calls once a limit is reached."""

    def __init__(self, max_calls: int | None, max_cost: float | None) -> None:
        self.max_calls, self.max_cost = max_calls, max_cost
        self.calls, self.cost, self.reserved = 0, 0.0, 0
        self.stop_reason: str | None = None

    def reserve(self) -> bool:
        if self.stop_reason is None:
            if self.max_calls is not None and self.calls + self.reserved >= self.max_calls:
                self.stop_reason = f"max_calls={self.max_calls} reached"
            elif self.max_cost is not None and self.cost >= self.max_cost:
                self.stop_reason = f"max_cost=${self.max_cost:g} reached"
        if self.stop_reason is not None:
            return False
        self.reserved += 1
        return True

    def settle(self, *, cached: bool, cost: float) -> None:
        self.reserved -= 1
        if not cached:
            self.calls += 1
        self.cost += cost


@dataclass
class _Job:
    dataset: str
    index: int
    task: Task
    method: MethodSpec
    env_llm: str

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.dataset, self.method.label, self.env_llm, self.index)

    def record(self, **fields: Any) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "method": self.method.label,
            "env_llm": self.env_llm,
            "index": self.index,
            "task_id": self.task.id,
            "ability": self.task.ability,
            "question": self.task.question,
            "gold": list(self.task.answers),
            **fields,
        }


def _record_key(r: Mapping[str, Any]) -> tuple[str, str, str, int]:
    return (r["dataset"], r["method"], r["env_llm"], int(r["index"]))


def _dataset_name(spec: str) -> str:
    """``data/hotpot.parquet`` -> ``hotpot``; ``synthetic:test`` -> ``synthetic-test``."""
    if spec.startswith("synthetic"):
        return spec.replace(":", "-")
    return Path(spec).stem


class _Run:
    def __init__(self, cfg: HarnessConfig, backends: Mapping[str, LLMBackend], out: Path) -> None:
        self.cfg = cfg
        self.backends = backends
        self.jsonl = out / "transcripts.jsonl"
        self.budget = _Budget(cfg.max_calls, cfg.max_cost)
        self.sampling = {"temperature": cfg.env_temperature, "max_tokens": cfg.env_max_tokens}
        self.new_records: list[dict[str, Any]] = []
        self._embedder: Any = None

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from promptr1.rewards.similarity import default_embedder

            self._embedder = default_embedder(self.cfg.embedder)
        return self._embedder

    def finish(self, job: _Job, prediction: str, error: str | None, **fields: Any) -> None:
        metrics = (
            {}
            if error
            else score_prediction(
                prediction,
                job.task.answers,
                job.task.ability,
                self.embedder if job.task.ability == "text" else None,
            )
        )
        rec = job.record(prediction=prediction, metrics=metrics, env_error=error, **fields)
        append_jsonl(self.jsonl, rec)
        self.new_records.append(rec)

    # ------------------------------------------------------------------ direct / cot
    async def single_call(self, jobs: Sequence[_Job]) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(job: _Job) -> None:
            async with sem:
                if not self.budget.reserve():
                    return
                backend = self.backends[job.env_llm]
                cot = job.method.kind == "cot"
                prompt = job.task.question + ("\n\n" + COT_INSTRUCTION if cot else "")
                messages = [{"role": "user", "content": prompt}]
                t0 = time.perf_counter()
                reply, error, c = "", None, None
                try:
                    c = await backend.acomplete(messages, **self.sampling)
                    reply = c.text
                except EnvLLMError as exc:
                    error = f"{exc.kind}: {exc}"
                except Exception as exc:  # a backend bug flags the episode instead of ending the run
                    error = f"error: {type(exc).__name__}: {exc}"
                cost = float(c.cost_usd or 0.0) if c else 0.0
                self.budget.settle(cached=bool(c and c.cached), cost=cost)
                pred = "" if error else extract_prediction(reply, job.task.ability, cot=cot)
                self.finish(
                    job,
                    pred,
                    error,
                    turns=[*messages, {"role": "assistant", "content": reply}],
                    num_turns=1,
                    env_llm_calls=1,
                    latency_s=time.perf_counter() - t0,
                    env_llm_latency_s=c.latency_s if c else 0.0,
                    tokens=(c.prompt_tokens + c.completion_tokens) if c else 0,
                    cost_usd=cost,
                    reward=None,
                )

        await asyncio.gather(*(one(j) for j in jobs))

    # ------------------------------------------------------------------ agent episodes
    async def agent_episodes(self, policy: AgentPolicy, jobs: Sequence[_Job]) -> None:
        """Episodes advance independently: the policy batches every episode waiting for a turn while
        the env-LLM calls of the others are in flight."""
        from promptr1.envs.collab_env import PromptCollabEnv

        todo = deque(jobs)
        waiting: list[tuple[_Job, Any, float]] = []
        inflight: dict[asyncio.Future, tuple[_Job, Any, float, bool, float]] = {}
        while True:
            while (
                todo
                and len(waiting) + len(inflight) < self.cfg.concurrency
                and self.budget.stop_reason is None
            ):
                job = todo.popleft()
                env = PromptCollabEnv(
                    task=job.task,
                    env_llm=self.backends[job.env_llm],
                    max_turns=self.cfg.max_turns,
                    max_response_chars=self.cfg.max_response_chars,
                    sampling=self.sampling,
                )
                env.reset(seed=self.cfg.seed, options={"task": job.task})
                waiting.append((job, env, time.perf_counter()))
            if not waiting and not inflight:
                break
            if waiting:
                batch, waiting = waiting[: self.cfg.agent_batch_size], waiting[self.cfg.agent_batch_size :]
                chats = [[dict(m) for m in env.messages] for _, env, _ in batch]
                actions = await asyncio.to_thread(policy.act, chats)
                if len(actions) != len(batch):
                    raise ValueError(f"AgentPolicy.act returned {len(actions)} turns for {len(batch)} chats.")
                for (job, env, t0), action in zip(batch, actions):
                    parsed = parse_turn(action)
                    calls = parsed.kind == "prompt" and bool(parsed.prompt)
                    if calls and not self.budget.reserve():
                        continue  # abandoned: not recorded, so a re-run redoes this episode
                    task = asyncio.ensure_future(env.astep(action))
                    inflight[task] = (job, env, t0, calls, env.episode_stats["env_llm_cost_usd"])
            if inflight:
                done, _ = await asyncio.wait(
                    list(inflight), timeout=0 if waiting else None, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    job, env, t0, calls, cost_before = inflight.pop(task)
                    _, _, terminated, truncated, info = task.result()
                    if calls:
                        self.budget.settle(
                            cached=bool(info.get("env_llm_cached")),
                            cost=env.episode_stats["env_llm_cost_usd"] - cost_before,
                        )
                    if terminated or truncated:
                        ep = info.get("episode", {})
                        self.finish(
                            job,
                            info.get("answer") or "",
                            info.get("env_error"),
                            turns=[dict(m) for m in env.messages],
                            num_turns=env.turn,
                            env_llm_calls=ep.get("env_llm_calls", 0),
                            latency_s=time.perf_counter() - t0,
                            env_llm_latency_s=ep.get("env_llm_latency_s", 0.0),
                            tokens=ep.get("env_llm_tokens", 0),
                            cost_usd=ep.get("env_llm_cost_usd", 0.0),
                            reward=info.get("reward_components", {}).get("total"),
                        )
                    else:
                        waiting.append((job, env, t0))


# ============================================================================= result


@dataclass
class EvalResult:
    """What a run produced: the summary rows, every record of the plan, and where the files are."""

    rows: list[Any]
    averages: list[Any]
    records: list[dict[str, Any]]
    planned: int
    stop_reason: str | None
    calls: int
    cost_usd: float
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        """True when some planned episodes have no record (budget stop, or a crash)."""
        return len(self.records) < self.planned

    def score(
        self, dataset: str, method: str, metric: str | None = None, env_llm: str | None = None
    ) -> float:
        """Mean of ``metric`` (default: the dataset's primary one) for one dataset and method."""
        for row in self.rows:
            if (
                row.dataset == dataset
                and row.method == method
                and (env_llm is None or row.env_llm == env_llm)
            ):
                return row.metrics[metric or row.primary][0]
        raise KeyError(
            f"no result for dataset={dataset!r}, method={method!r}, env_llm={env_llm!r}; "
            f"have {sorted({(r.dataset, r.method, r.env_llm) for r in self.rows})}."
        )

    def scalars(self, prefix: str = "eval") -> dict[str, float]:
        """Flat ``{key: value}``: ``eval/<dataset>/<metric>/<method>@<env>`` and ``eval/average/...``."""

        def clean(s: str) -> str:
            return re.sub(r"[^A-Za-z0-9_.\-@]+", "_", s)

        out: dict[str, float] = {}
        for r in self.rows:
            for name, (mean, _, _) in r.metrics.items():
                if not math.isnan(mean):
                    out[f"{prefix}/{clean(r.dataset)}/{name}/{clean(r.method)}@{clean(r.env_llm)}"] = mean
        for a in self.averages:
            out[f"{prefix}/average/{clean(a.method)}@{clean(a.env_llm)}"] = a.mean
        return out

    def log_to(self, sink: Any, step: int, prefix: str = "eval") -> dict[str, float]:
        """Send :meth:`scalars` to a TensorBoard ``SummaryWriter`` (``add_scalar``), a logger with
        ``record(key, value)``, or a function ``fn(key, value)``. Returns the scalars."""
        values = self.scalars(prefix)
        for key, value in values.items():
            if hasattr(sink, "add_scalar"):
                sink.add_scalar(key, value, step)
            elif hasattr(sink, "record"):
                sink.record(key, value)
            elif callable(sink):
                sink(key, value)
            else:
                raise TypeError(
                    f"log_to needs a SummaryWriter, a logger with record(), or a function; "
                    f"got {type(sink).__name__}."
                )
        return values


# ============================================================================= entry points


def _check_resume(cfg: HarnessConfig, out: Path) -> None:
    path = out / "run_config.json"
    mine = {k: getattr(cfg, k) for k in _EPISODE_FIELDS}
    if cfg.overwrite:
        for name in ("transcripts.jsonl", "report.md", "chart.png", "summary.json", "run_config.json"):
            (out / name).unlink(missing_ok=True)
    elif path.is_file() and (out / "transcripts.jsonl").is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in mine.items() if old.get(k) != v}
        if diff:
            what = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} holds transcripts made with {what}; resuming would mix settings. Use another "
                "output_dir, or overwrite=True (--overwrite) to start afresh."
            )
    path.write_text(json.dumps(mine, indent=2))


def _build_backend(spec: str, cfg: HarnessConfig, given: Mapping[str, LLMBackend]) -> LLMBackend:
    backend = given[spec] if spec in given else make_backend(spec)
    if cfg.cache:
        from promptr1.llm_backends.cache import CachedBackend

        backend = CachedBackend(backend, cfg.cache, cfg.cache_mode)
    return backend


def _run_coro(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}  # called from inside an event loop (a notebook, an async trainer)
    t = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(coro)))
    t.start()
    t.join()
    return box.get("r")


def run_evaluation(
    cfg: HarnessConfig,
    *,
    agents: Mapping[str, AgentPolicy] | None = None,
    backends: Mapping[str, LLMBackend] | None = None,
) -> EvalResult:
    """Run (or resume) the evaluation ``cfg`` describes and write its report.

    ``agents``: policies by name, used for ``agent:NAME`` instead of loading ``NAME`` (e.g. the
    trainer's live model for a periodic eval). ``backends``: env LLMs by name, used for an
    ``env_llms`` entry instead of :func:`~promptr1.llm_backends.make_backend`.
    """
    agents, backends = dict(agents or {}), dict(backends or {})
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out)
    methods = [parse_method(m) for m in cfg.methods]
    if len({m.label for m in methods}) != len(methods):
        raise ValueError(f"two methods share a label in {cfg.methods}; give them labels: 'name=agent:PATH'.")
    datasets = []
    for spec in cfg.tasks:
        tasks = load_tasks(spec, split="test")
        n = len(tasks) if cfg.limit is None else min(cfg.limit, len(tasks))
        datasets.append((_dataset_name(spec), [tasks[i] for i in range(n)]))
    if len({d for d, _ in datasets}) != len(datasets):
        raise ValueError(
            f"two task files share a name in {cfg.tasks}; rename one (reports key datasets by file stem)."
        )

    plan = [
        _Job(ds, i, t, m, e)
        for m in methods
        for e in cfg.env_llms
        for ds, tasks in datasets
        for i, t in enumerate(tasks)
    ]
    old = {_record_key(r): r for r in read_jsonl(out / "transcripts.jsonl")}  # the last record of a key wins
    todo = [j for j in plan if j.key not in old or old[j.key].get("env_error")]

    env_backends = {
        e: _build_backend(e, cfg, backends) for e in cfg.env_llms if any(j.env_llm == e for j in todo)
    }
    run = _Run(cfg, env_backends, out)

    async def main() -> None:
        for m in methods:
            for e in cfg.env_llms:
                jobs = [j for j in todo if j.method == m and j.env_llm == e]
                if not jobs or run.budget.stop_reason:
                    continue
                if m.kind == "agent":
                    policy = agents.get(m.model) or load_agent_policy(m.model, cfg)
                    agents.setdefault(m.model, policy)  # reused for the transfer rows
                    await run.agent_episodes(policy, jobs)
                else:
                    await run.single_call(jobs)

    try:
        _run_coro(main())
    finally:
        for b in env_backends.values():
            close = getattr(b, "close", None)
            if callable(close):
                close()
    latest = {**old, **{_record_key(r): r for r in run.new_records}}
    records = [latest[j.key] for j in plan if j.key in latest]
    rows = summarize(records)
    averages = average_rows(rows)
    result = EvalResult(
        rows, averages, records, len(plan), run.budget.stop_reason, run.budget.calls, run.budget.cost
    )
    _write_outputs(result, cfg, out)
    return result


def _write_outputs(result: EvalResult, cfg: HarnessConfig, out: Path) -> None:
    n_err = sum(1 for r in result.records if r.get("env_error"))
    if result.partial:
        why = result.stop_reason or "interrupted"
        status = f"PARTIAL: {len(result.records)} of {result.planned} episodes ({why}); re-run to resume"
    else:
        status = f"complete: {result.planned} episodes"
    if n_err:
        status += f"; {n_err} env-LLM failures (not scored; a re-run retries them)"
    notes = [
        f"env LLMs: {', '.join(f'`{e}`' for e in cfg.env_llms)}",
        f"methods: {', '.join(f'`{m}`' for m in cfg.methods)}",
        f"max_turns={cfg.max_turns}; SSim embedder: {cfg.embedder}",
        f"this run: {result.calls} uncached env-LLM calls, ${result.cost_usd:.4f}",
    ]
    md = render_markdown(result.rows, result.averages, status=status, notes=notes)
    result.paths["report"] = out / "report.md"
    result.paths["report"].write_text(md, encoding="utf-8")
    result.paths["transcripts"] = out / "transcripts.jsonl"
    summary = {
        "status": status,
        "partial": result.partial,
        "planned": result.planned,
        "finished": len(result.records),
        "rows": [asdict(r) for r in result.rows],
        "averages": [asdict(a) for a in result.averages],
    }
    result.paths["summary"] = out / "summary.json"
    result.paths["summary"].write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    if cfg.chart and result.rows:
        result.paths["chart"] = write_chart(result.rows, result.averages, out / "chart.png")


def _parser() -> argparse.ArgumentParser:
    d = HarnessConfig()
    p = argparse.ArgumentParser(
        prog="promptr1 eval",
        description="Evaluate direct, CoT and agent methods on task files, with a Markdown/JSONL/PNG report.",
    )
    p.add_argument(
        "tasks", nargs="*", help="task files (.parquet in the Prompt-R1 schema, .jsonl) or synthetic:test"
    )
    p.add_argument(
        "--tasks", dest="more_tasks", nargs="+", default=[], help="task files (same as positional)"
    )
    p.add_argument(
        "--methods", nargs="+", default=d.methods, help="direct, cot, agent:MODEL, LABEL=agent:MODEL"
    )
    p.add_argument(
        "--env-llm",
        "--env-llms",
        dest="env_llms",
        nargs="+",
        default=d.env_llms,
        help="env LLM specs; several give transfer rows",
    )
    p.add_argument("--out", "--output-dir", dest="output_dir", default=d.output_dir)
    p.add_argument("--limit", type=int, default=None, help="first N questions per dataset")
    p.add_argument("--max-turns", type=int, default=d.max_turns)
    p.add_argument("--max-response-chars", type=int, default=d.max_response_chars)
    p.add_argument("--env-temperature", type=float, default=d.env_temperature)
    p.add_argument("--env-max-tokens", type=int, default=d.env_max_tokens)
    p.add_argument("--agent-max-new-tokens", type=int, default=d.agent_max_new_tokens)
    p.add_argument("--agent-temperature", type=float, default=d.agent_temperature)
    p.add_argument("--agent-batch-size", type=int, default=d.agent_batch_size)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--max-calls", type=int, default=None)
    p.add_argument("--max-cost", type=float, default=None, help="USD")
    p.add_argument("--cache", default=None, help="record/replay cache file for env-LLM calls")
    p.add_argument("--cache-mode", default=d.cache_mode)
    p.add_argument("--embedder", default=d.embedder, choices=["minilm", "hashing"])
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None)
    p.add_argument("--no-chart", dest="chart", action="store_false")
    p.add_argument("--overwrite", action="store_true", help="discard earlier transcripts instead of resuming")
    return p


def harness_main(argv: Sequence[str]) -> int:
    """``promptr1 eval TASKS... [--methods ...] [--env-llm ...] ...``; prints the report.

    Exit code 0 when complete, 3 when stopped early by ``--max-calls``/``--max-cost`` (partial),
    2 for a usage error (bad option, missing task file, unknown method or env LLM).
    """
    try:
        args = vars(_parser().parse_args(list(argv)))
    except SystemExit as exc:  # --help, or argparse's own usage error
        return int(exc.code or 0)
    args["tasks"] = args["tasks"] + args.pop("more_tasks")
    if not args["tasks"]:
        print("promptr1 eval: give at least one task file (TASKS... or --tasks FILE...).", file=sys.stderr)
        return 2
    try:
        result = run_evaluation(HarnessConfig(**args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"promptr1 eval: {exc}", file=sys.stderr)
        return 2
    print(result.paths["report"].read_text(encoding="utf-8"))
    print(
        f"transcripts: {result.paths['transcripts']}"
        + (f"\nchart: {result.paths['chart']}" if "chart" in result.paths else "")
    )
    return 3 if result.partial else 0
