"""Running an evaluation: the plan, the schedule, the budget, resume, and the files it writes.

The plan is every (dataset, method, env LLM, question) of an :class:`~promptr1.evaluation.config.EvalConfig`.
Methods run one after another, each against every env LLM (the transfer rows):

* ``direct`` / ``cot``: one env-LLM call per question, ``concurrency`` calls in flight;
* agents: episodes in :class:`~promptr1.envs.collab_env.PromptCollabEnv`, built from the config's env
  settings (:meth:`~promptr1.core.settings.RunSettings.env_kwargs`: turns, reply length, reward variant,
  env sampling), played ``batch_size`` at a time by an
  :class:`~promptr1.evaluation.policies.EpisodePlayer`; a model agent is played by the training
  rollout itself (:class:`~promptr1.evaluation.policies.ModelPolicy`).

Every env LLM is wrapped as ``CachedBackend(BudgetedBackend(backend))`` (the cache only with
``cache``): cached replies are free, real calls count against ``max_calls``/``max_cost``. Once the
budget refuses a call, no new episode starts, episodes cut short by the refusal are dropped, and the
result is partial. Each finished episode is appended to ``transcripts.jsonl`` as it is recorded; a
later run with the same ``output_dir`` skips the (dataset, method, env LLM, index) keys already
there and retries those whose env LLM failed.

Python::

    result = run_evaluation(EvalConfig(tasks=["hotpot.parquet"], methods=["direct", "agent:smollm2"],
                                       env_llm="openai:gpt-4o-mini", output_dir="runs/eval"))
    result.log_to(summary_writer, step)

:func:`compare_policies` is the training pipeline's "untrained vs trained" table: several agents in
memory, one env LLM backend built by the caller, the caller's env settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptr1.envs.tasks import Task, load_tasks, type_summary
from promptr1.core.fileio import atomic_write_text
from promptr1.llm_backends import EnvLLMError, LLMBackend

from promptr1.llm_backends.budget import Budget, is_budget_stop
from promptr1.llm_backends.pricing import call_cost
from promptr1.rewards.metrics import METRIC_SETS
from .config import EvalConfig
from .methods import MethodSpec, baseline_messages, parse_method
from .policies import EpisodePlayer, ModelPolicy, as_player, rollout_config
from .report import append_jsonl, read_jsonl, render_markdown, write_chart
from .results import EvalResult, average_rows, episode_record, record_key, summarize
from .scoring import extract_prediction, score_prediction, task_type

__all__ = ["compare_policies", "dataset_name", "eval_config_from", "run_evaluation"]

OUTPUT_FILES = ("transcripts.jsonl", "report.md", "chart.png", "summary.json", "run_config.json")


def dataset_name(spec: Any) -> str:
    """A dataset's name in reports: ``data/hotpot.parquet`` -> ``hotpot``; ``synthetic:test`` -> ``synthetic-test``.

    >>> dataset_name("data/hotpot.parquet"), dataset_name("synthetic"), dataset_name("synthetic:test")
    ('hotpot', 'synthetic', 'synthetic-test')
    """
    text = str(spec)
    if not Path(text).suffix:
        return text.replace(":", "-")
    return Path(text).stem


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


class _TimedEnv:
    """An env as the players see it, timing its episode (reset to last step)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.t0 = self.t1 = time.perf_counter()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.t0 = self.t1 = time.perf_counter()
        return self.env.reset(seed=seed, options=options)

    def step(self, action: str):
        out = self.env.step(action)
        self.t1 = time.perf_counter()
        return out

    async def astep(self, action: str):
        out = await self.env.astep(action)
        self.t1 = time.perf_counter()
        return out

    @property
    def latency_s(self) -> float:
        return max(self.t1 - self.t0, 0.0)


def _run_coro(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}  # called from inside an event loop (a notebook, an async trainer)

    def target() -> None:
        try:
            box["r"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["e"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("r")


class _Run:
    def __init__(self, cfg: EvalConfig, backends: Mapping[str, LLMBackend], out: Path, budget: Budget) -> None:
        self.cfg = cfg
        self.backends = backends
        self.jsonl = out / "transcripts.jsonl"
        self.budget = budget
        self.sampling = cfg.env_sampling()
        self.new_records: list[dict[str, Any]] = []
        self.seconds: dict[str, float] = {}
        self._embedder: Any = None
        from promptr1.agents.interrupt import StopRequest

        self.stop = StopRequest()  # Ctrl-C / SIGTERM: finish the episodes in hand, start no more

    @property
    def halted(self) -> bool:
        """No new episode starts: the budget is spent or a stop was requested."""
        return bool(self.budget.stop_reason) or self.stop.requested

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from promptr1.rewards.similarity import default_embedder

            self._embedder = default_embedder(self.cfg.embedder)
        return self._embedder

    def log(self, text: str) -> None:
        if self.cfg.progress:
            print(f"promptr1 eval: {text}", file=sys.stderr, flush=True)

    def finish(self, job: _Job, prediction: str, error: str | None, **fields: Any) -> None:
        metrics = {}
        if not error:
            text = task_type(job.task.ability) == "text"
            metrics = score_prediction(prediction, job.task.answers, job.task.ability, self.embedder if text else None,
                                       metrics=self.cfg.metrics)
        rec = episode_record(dataset=job.dataset, method=job.method.label, env_llm=job.env_llm, index=job.index,
                             task=job.task, prediction=prediction, metrics=metrics, env_error=error, **fields)
        append_jsonl(self.jsonl, rec)
        self.new_records.append(rec)

    # ------------------------------------------------------------------ direct / cot
    async def single_call(self, jobs: Sequence[_Job]) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(job: _Job) -> None:
            async with sem:
                if self.halted:
                    return
                messages = baseline_messages(job.task.question, job.method.kind)
                t0 = time.perf_counter()
                reply, error, c, price = "", None, None, None
                try:
                    backend = self.backends[job.env_llm]
                    if isinstance(backend, Mapping):  # several env LLMs: a baseline asks the default one
                        name = self.cfg.env_default_model or next(iter(backend))
                        backend, price = backend[name], self.cfg.env_models_map()[1].get(name)
                    c = await backend.acomplete(messages, **self.sampling)
                    reply = c.text
                except EnvLLMError as exc:
                    error = f"{exc.kind}: {exc}"
                except Exception as exc:  # a backend bug flags the episode instead of ending the run
                    error = f"error: {type(exc).__name__}: {exc}"
                if is_budget_stop(error):
                    return  # not recorded: a re-run does it
                cot = job.method.kind == "cot"
                pred = "" if error else extract_prediction(reply, job.task.ability, cot=cot)
                self.finish(job, pred, error,
                            turns=[*messages, {"role": "assistant", "content": reply}],
                            num_turns=1, env_llm_calls=1, latency_s=time.perf_counter() - t0,
                            env_llm_latency_s=c.latency_s if c else 0.0,
                            tokens=(c.prompt_tokens + c.completion_tokens) if c else 0,
                            cost_usd=call_cost(c, price) if c else 0.0)

        await asyncio.gather(*(one(j) for j in jobs))

    # ------------------------------------------------------------------ agent episodes
    async def agent_episodes(self, player: EpisodePlayer, jobs: Sequence[_Job]) -> None:
        """Episodes in rollout batches of ``batch_size``; within a batch they advance independently."""
        from promptr1.envs.collab_env import PromptCollabEnv

        size = self.cfg.batch_size
        for start in range(0, len(jobs), size):
            if self.halted:
                return
            chunk = jobs[start : start + size]
            envs = [_TimedEnv(PromptCollabEnv.from_settings(j.task, self.backends[j.env_llm], self.cfg))
                    for j in chunk]
            episodes = await player.aplay(envs, [j.task for j in chunk], seed=self.cfg.seed)
            for job, env, ep in zip(chunk, envs, episodes):
                if is_budget_stop(ep.env_error):
                    continue  # cut short by the budget: not recorded, a re-run redoes it
                stats = env.env.episode_stats
                comps = ep.components or {}
                self.finish(
                    job, episode_prediction(ep, self.cfg.framing), ep.env_error,
                    turns=ep.messages, num_turns=ep.turns, env_llm_calls=stats["env_llm_calls"],
                    latency_s=env.latency_s, env_llm_latency_s=stats["env_llm_latency_s"],
                    tokens=stats["env_llm_tokens"], cost_usd=stats["env_llm_cost_usd"],
                    reward=ep.reward, format_ok=float(float(comps.get("format", 0.0) or 0.0) >= 1.0 - 1e-9),
                    reward_variant=comps.get("variant", self.cfg.reward_variant),
                    reward_components=comps,
                    cost_by_model=stats.get("cost_by_model"), calls_by_model=stats.get("calls_by_model"),
                )
            self.log(f"{chunk[0].method.label} @ {chunk[0].env_llm}: {min(start + size, len(jobs))}/{len(jobs)} episodes")

    async def main(self, methods: Sequence[MethodSpec], todo: Sequence[_Job], players: dict[str, Any]) -> None:
        for i, m in enumerate(methods):
            for e in self.cfg.env_llms:
                jobs = [j for j in todo if j.method == m and j.env_llm == e]
                if not jobs or self.halted:
                    continue
                t0 = time.perf_counter()
                if m.kind == "agent":
                    if m.model not in players:
                        self.log(f"loading agent model {m.model!r}")
                        players[m.model] = ModelPolicy.load(
                            m.model, rollout=rollout_config(self.cfg), device="cpu" if self.cfg.cpu else None,
                            seed=self.cfg.seed, dtype=self.cfg.model_dtype)
                    await self.agent_episodes(players[m.model], jobs)
                else:
                    await self.single_call(jobs)
                column = f"{m.label} @ {e}"
                self.seconds[column] = self.seconds.get(column, 0.0) + time.perf_counter() - t0
            if m.kind == "agent" and m.model in players and not any(
                    later.kind == "agent" and later.model == m.model for later in methods[i + 1:]):
                players.pop(m.model)  # free a loaded model once no later method needs it


def _check_resume(cfg: EvalConfig, out: Path) -> None:
    path = out / "run_config.json"
    mine = json.loads(json.dumps(cfg.episode_settings()))  # as it reads back from the file
    if cfg.overwrite:
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    elif path.is_file() and (out / "transcripts.jsonl").is_file():
        try:
            old = json.loads(path.read_text())
        except (ValueError, OSError) as e:
            raise ValueError(
                f"{path} cannot be read ({e}), so the settings of the transcripts beside it are unknown. If they were "
                "made with the settings of this command, delete that one file to resume (the transcripts are kept); "
                "otherwise use another output_dir."
            ) from None
        diff = {k: (old.get(k), v) for k, v in mine.items() if k in old and old[k] != v}  # keys an older version
        # did not record were at their default then
        if diff:
            what = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} holds transcripts made with {what}; resuming would mix settings. Use another "
                "output_dir, or overwrite=True (--overwrite) to start afresh."
            )
    atomic_write_text(path, json.dumps(mine, indent=2))


def _build_backend(spec: str, cfg: EvalConfig, given: Mapping[str, LLMBackend], budget: Budget) -> LLMBackend:
    from promptr1.llm_backends import from_settings

    if cfg.env_models and spec == cfg.env_llm_label() and spec not in given:  # several env LLMs in the agent's env
        return from_settings(cfg, budget=budget)[0]
    return from_settings(cfg, given=given.get(spec), spec=spec, budget=budget)[0]


def _load_datasets(cfg: EvalConfig, given: Mapping[str, Sequence[Task]] | None) -> list[tuple[str, list[Task]]]:
    if given is not None:
        sources = list(given.items())
    else:
        chosen = cfg.task_types()
        unknown = set(chosen) - {dataset_name(spec) for spec in cfg.tasks} - set(cfg.tasks)
        if unknown:
            raise ValueError(f"task_type names {sorted(unknown)} match no dataset; the datasets are "
                             f"{[dataset_name(s) for s in cfg.tasks]}.")
        sources = [(dataset_name(spec), load_tasks(spec, split=cfg.split,
                                                   task_type=chosen.get(dataset_name(spec), chosen.get(spec))))
                   for spec in cfg.tasks]
    out = []
    for name, tasks in sources:
        n = len(tasks) if cfg.limit is None else min(cfg.limit, len(tasks))
        out.append((name, [tasks[i] for i in range(n)]))
    if len({d for d, _ in out}) != len(out):
        raise ValueError(f"two task sources share a name in {cfg.tasks}; rename one (reports key datasets by file stem).")
    return out


def run_evaluation(
    cfg: EvalConfig,
    *,
    agents: Mapping[str, Any] | None = None,
    backends: Mapping[str, LLMBackend] | None = None,
    datasets: Mapping[str, Sequence[Task]] | None = None,
) -> EvalResult:
    """Run (or resume) the evaluation ``cfg`` describes and write its report.

    ``agents``: agents by model name, used for ``agent:NAME`` instead of loading ``NAME``: a
    :class:`~promptr1.evaluation.policies.ModelPolicy`, a ``(model, tokenizer)`` pair (the trainer's
    live model), or any :class:`~promptr1.evaluation.policies.AgentPolicy`. ``backends``: env LLMs by
    spec, used instead of :func:`~promptr1.llm_backends.make_backend` (not closed here).
    ``datasets``: tasks by dataset name, instead of loading ``cfg.tasks``.
    """
    backends = dict(backends or {})
    rollout = rollout_config(cfg)
    players = {name: as_player(a, rollout=rollout, batch_size=cfg.batch_size, seed=cfg.seed, name=name)
               for name, a in (agents or {}).items()}
    methods = [parse_method(m, cfg.model) for m in cfg.methods]
    from promptr1.agents.models import check_model_name

    for m in methods:  # every agent resolves before the first call (a wrong path is one line, not a hub lookup)
        if m.kind == "agent" and m.model not in players:
            check_model_name(m.model, what=f"method {m.label!r}: agent model")
    data = _load_datasets(cfg, datasets)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out)

    plan = [_Job(ds, i, t, m, e) for m in methods for e in cfg.env_llms for ds, tasks in data
            for i, t in enumerate(tasks)]
    old = {record_key(r): r for r in read_jsonl(out / "transcripts.jsonl")}  # the last record of a key wins
    todo = [j for j in plan if j.key not in old or old[j.key].get("env_error")]

    budget = Budget(cfg.max_calls, cfg.max_cost)
    env_backends = {e: _build_backend(e, cfg, backends, budget)
                    for e in cfg.env_llms if any(j.env_llm == e for j in todo)}
    run = _Run(cfg, env_backends, out, budget)
    if len(todo) < len(plan):
        run.log(f"resuming from {out / 'transcripts.jsonl'}: {len(plan) - len(todo)} of {len(plan)} episodes "
                f"done, {len(todo)} to play")
    try:
        with run.stop:
            _run_coro(run.main(methods, todo, players))
    finally:
        for b in env_backends.values():
            close = getattr(b, "close", None)
            if callable(close):
                close()
    latest = {**old, **{record_key(r): r for r in run.new_records}}
    records = [latest[j.key] for j in plan if j.key in latest]
    rows = summarize(records)
    stop_reason = budget.stop_reason or (f"interrupted by {run.stop.name}" if run.stop.requested else None)
    result = EvalResult(rows, average_rows(rows), records, len(plan), stop_reason, budget.calls,
                        budget.cost, seconds=run.seconds, signal=run.stop.signum)
    result.task_types = {name: type_summary(tasks) for name, tasks in data}
    _write_outputs(result, cfg, out)
    return result


def _status(result: EvalResult) -> str:
    n_err = sum(1 for r in result.records if r.get("env_error"))
    failed = result.failed_columns()
    if result.budget_stopped:  # the budget stopped the run: a partial result, never a failure (exit 3)
        status = (f"PARTIAL: budget reached ({result.stop_reason}): {len(result.records)} of "
                  f"{result.planned} episodes; re-run the same command to resume (with a new budget)")
        if failed:
            status += "; before it, " + "; ".join(f"{column}: {why}" for column, why in failed.items())
        elif n_err:
            status += f"; {n_err} env-LLM failures (not scored; a re-run retries them)"
        return status
    if failed:
        return "FAILED: " + "; ".join(f"{column}: {why}" for column, why in failed.items()) + (
            "; fix the env LLM (key, URL, model name) and re-run: finished episodes are kept, failed ones retried")
    if result.partial:
        why = result.stop_reason or "interrupted"
        status = f"PARTIAL: {len(result.records)} of {result.planned} episodes ({why}); re-run to resume"
    else:
        status = f"complete: {result.planned} episodes"
    if n_err:
        status += f"; {n_err} env-LLM failures (not scored; a re-run retries them)"
    return status


def episode_prediction(ep: Any, framing: str) -> str:
    """An agent episode's prediction: its answer; under a framing that names one (``reference-eval``, the official
    evaluation scripts'), the fixed text of an episode that ran out of turns or outgrew the context.

    >>> from promptr1.agents.episode import Episode
    >>> ep = Episode(task=None, group=0, done=True, truncated=True)
    >>> episode_prediction(ep, "reference-eval"), episode_prediction(ep, "reference")
    ('Maximum turns reached without final answer', '')
    """
    from promptr1.envs.framing import FRAMINGS

    answer = (ep.components or {}).get("answer_text") or ""
    if ep.truncated and not ep.env_error:
        fr = FRAMINGS.get(framing)
        fixed = fr.overflow_prediction if ep.overflow else fr.out_of_turns_prediction
        if fixed is not None:
            return fixed
    return answer


def _write_outputs(result: EvalResult, cfg: EvalConfig, out: Path) -> None:
    status = _status(result)
    notes = [
        f"env LLMs: {', '.join(f'`{e}`' for e in cfg.env_llms)}",
        f"methods: {', '.join(f'`{m}`' for m in cfg.methods)}",
        f"episodes: max_turns={cfg.max_turns}, reward variant `{cfg.reward_variant}`, env temperature "
        f"{'the server default' if cfg.env_temperature is None else format(cfg.env_temperature, 'g')}; agent temperature {cfg.temperature:g}"
        f"{' (greedy)' if cfg.temperature == 0 else ''}; SSim embedder: {cfg.embedder}",
        f"metrics: `{cfg.metrics}`: {METRIC_SETS[cfg.metrics].description}",
        f"this run: {result.calls} uncached env-LLM calls, ${result.cost_usd:.4f}",
        *(f"task type of `{name}`: {why}" for name, why in result.task_types.items()),
    ]
    result.paths["report"] = out / "report.md"
    atomic_write_text(result.paths["report"], render_markdown(result.rows, result.averages, status=status, notes=notes))
    result.paths["transcripts"] = out / "transcripts.jsonl"
    result.paths["summary"] = out / "summary.json"
    atomic_write_text(result.paths["summary"], json.dumps(result.to_json(status), indent=2, default=str))
    if cfg.chart and result.rows:
        result.paths["chart"] = write_chart(result.rows, result.averages, out / "chart.png")


# ----------------------------------------------------------------------------- the training pipeline's table


def eval_config_from(settings: Any, **overrides: Any) -> EvalConfig:
    """An :class:`EvalConfig` with the shared settings of ``settings`` (any
    :class:`~promptr1.core.settings.RunSettings`, e.g. a training config: the same episode, reward variant,
    env sampling and agent decoding), its eval-only settings if it is an ``EvalConfig``, then ``overrides``.

    >>> from promptr1.core.settings import RunSettings
    >>> cfg = eval_config_from(RunSettings(max_turns=3, reward_variant="answer_gated"), methods=["direct"])
    >>> cfg.max_turns, cfg.reward_variant, cfg.methods
    (3, 'answer_gated', ['direct'])
    """
    from promptr1.core.settings import RunSettings

    names = {f.name for f in dataclasses.fields(EvalConfig)}
    shared = names if isinstance(settings, EvalConfig) else {f.name for f in dataclasses.fields(RunSettings)}
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name in shared}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"eval_config_from: unknown EvalConfig settings {sorted(unknown)}.")
    values.update(overrides)
    return EvalConfig(**values)


def compare_policies(
    policies: Mapping[str, Any],
    tasks: Any,
    env_llm: Any,
    settings: Any,
    *,
    episodes: int | None = None,
    temperature: float = 0.0,
    output_dir: str | None = None,
    **overrides: Any,
) -> EvalResult:
    """Evaluate several agents side by side on the same held-out questions, in one run (equal work).

    ``policies``: ``{label: agent}``, an agent being a ``(model, tokenizer)`` pair, a
    :class:`~promptr1.evaluation.policies.ModelPolicy` or an ``AgentPolicy``; rows appear in this
    order under these labels. Models on the CPU are moved to the accelerator unless ``settings.cpu``.
    ``tasks``: task sources (``"synthetic"``, files; their test split) or a list of :class:`Task`.
    ``env_llm``: an env LLM backend already built by the caller (used, never rebuilt or closed) or
    a spec. ``settings``: a :class:`~promptr1.core.settings.RunSettings` whose episode settings (turns,
    reply length, reward variant, env sampling) and decoding limits are used. ``episodes``: at most
    this many questions per dataset. ``temperature``: agent sampling (default 0, greedy).
    Outputs go to ``output_dir`` (default: ``settings.output_dir`` for an ``EvalConfig``, else
    ``<settings.output_dir>/eval``), replacing earlier ones. ``overrides``: other ``EvalConfig`` settings.

    Print the result with :func:`~promptr1.evaluation.report.format_table`.
    """
    import torch

    if not policies:
        raise ValueError("compare_policies needs at least one policy: {label: (model, tokenizer)}.")
    for label in policies:
        if not str(label).strip() or "=" in str(label):
            raise ValueError(f"policy label {label!r} must be non-empty and contain no '='.")
    spec = env_llm if isinstance(env_llm, str) else str(getattr(settings, "env_llm", "") or getattr(env_llm, "name", "env"))
    backends = {} if isinstance(env_llm, str) else {spec: env_llm}
    if isinstance(tasks, (str, Task)) or (isinstance(tasks, Sequence) and tasks and isinstance(tasks[0], Task)):
        datasets = {"held-out": list(load_tasks(tasks))} if not isinstance(tasks, str) else None
        specs = [tasks] if isinstance(tasks, str) else ["held-out"]
    else:
        datasets, specs = None, list(tasks)
    if output_dir is None:
        base = Path(settings.output_dir)
        output_dir = str(base if isinstance(settings, EvalConfig) else base / "eval")
    keys = {label: f"policy{i}" for i, label in enumerate(policies)}
    cfg = eval_config_from(
        settings, **{"tasks": specs, "methods": [f"{label}=agent:{keys[label]}" for label in policies],
                     "env_llm": spec, "transfer_env_llms": [], "temperature": temperature,
                     "output_dir": output_dir, "overwrite": True, "max_calls": None, "max_cost": None,
                     **({"limit": episodes} if episodes is not None else {}), **overrides})
    device = "cpu" if cfg.cpu or not torch.cuda.is_available() else "cuda"
    agents = {}
    for label, agent in policies.items():
        if isinstance(agent, tuple) and len(agent) == 2 and device != "cpu":
            model = agent[0]
            if next(model.parameters()).device.type == "cpu":
                model.to(device)
        agents[keys[label]] = agent
    return run_evaluation(cfg, agents=agents, backends=backends, datasets=datasets)
