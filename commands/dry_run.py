"""``promptr1 train --dry-run``: what a training config will ask of the env LLM, before anything loads."""

from __future__ import annotations

import math

from promptr1.agents.config import GRPOConfig

__all__ = ["dry_run_report"]


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def _validation_questions(cfg: GRPOConfig) -> tuple[int, str]:
    """Questions one validation plays (loads the task sources, not a model), and a note on sources it could not
    read (then ``eval_limit`` stands for their size, or they count 0)."""
    from promptr1.envs.tasks import load_tasks

    n, missing = 0, []
    for spec in cfg.eval_tasks or cfg.tasks:
        try:
            size = len(load_tasks(spec, split="test"))
        except (FileNotFoundError, ValueError, ImportError):
            missing.append(str(spec))
            size = cfg.eval_limit
        n += min(size, cfg.eval_limit) if cfg.eval_limit > 0 else size
    note = ""
    if missing:
        note = (f"  validation sources not readable here ({', '.join(missing)}): counted as "
                + (f"--eval-limit {cfg.eval_limit} questions each" if cfg.eval_limit > 0 else "0 questions"))
    return n, note


def _dearest_price(cfg: GRPOConfig) -> tuple[tuple[float, float] | None, str]:
    """The price a call is counted at (USD per 1,000 input / output tokens) and where it comes from.

    One env LLM: ``env_price_per_1k``. Several (``env_models``): each model's ``env_model_prices`` entry, else
    ``env_price_per_1k`` (its backend's own price), as the budget counts them; since the agent may send every
    call to any model, the upper bound counts each at the dearest input and the dearest output price. None
    when no price is known (then the budget's ``max_cost`` cannot stop the run).
    """
    own = tuple(float(v) for v in cfg.env_price_per_1k) if cfg.env_price_per_1k else None
    if not cfg.env_models:
        return own, ("--env-price-per-1k" if own
                     else "no price given (--env-price-per-1k IN OUT, USD per 1,000 tokens)")
    models, prices = cfg.env_models_map()
    each = {name: prices.get(name, own) for name in models}
    known = {name: p for name, p in each.items() if p is not None}
    unpriced = [name for name, p in each.items() if p is None]
    if not known:
        return None, ("no price given (--env-model-prices NAME=IN:OUT, or --env-price-per-1k IN OUT, USD per "
                      "1,000 tokens)")
    dearest = (max(p[0] for p in known.values()), max(p[1] for p in known.values()))
    shown = ", ".join(f"{n}={p[0]:g}:{p[1]:g}" for n, p in known.items())
    note = f"the dearest of --env-model-prices {shown}: every call may go to any model"
    if unpriced:
        note += f"; {', '.join(unpriced)} without a price, counted at $0 by the budget"
    return dearest, note


def dry_run_report(cfg: GRPOConfig) -> str:
    """What ``cfg`` will ask of the env LLM, as upper bounds: calls, input and output tokens, and dollars
    (with ``env_price_per_1k``, or the dearest of ``env_model_prices`` with several env LLMs), per episode,
    per step, per validation and for the whole run.

    Every agent turn may be a prompt, and the env sends every prompt, the last turn's included: up to
    ``max_turns`` calls an episode. A prompt is at most one agent turn (``max_new_tokens`` tokens); a reply is at
    most ``env_max_tokens`` tokens (with no limit, ``max_response_chars / 4`` as an estimate). The k-th call's
    input holds the env system prompt, the k-1 earlier prompts and replies, and the new prompt.

    >>> report = dry_run_report(GRPOConfig(steps=2, batch_questions=1, group_size=2, max_turns=2))
    >>> report.splitlines()[0]
    'promptr1 train --dry-run: expected env-LLM use, upper bounds (no model loaded, no call made)'
    >>> [line.split()[-4] for line in report.splitlines() if line.strip().startswith(("per step", "whole run"))]
    ['4', '8']
    """
    from promptr1.envs.collab_env import DEFAULT_ENV_SYSTEM_PROMPT
    from promptr1.llm_backends.limits import estimate_tokens

    steps_note = ""
    if cfg.epochs > 0:  # steps from the training tasks, as the trainer works them out (one process)
        import dataclasses

        from promptr1.envs.tasks import load_tasks

        try:
            cfg = dataclasses.replace(cfg, steps=cfg.epoch_steps(len(load_tasks(cfg.tasks, split="train"))))
        except (FileNotFoundError, ValueError, ImportError):
            steps_note = (f"  training tasks not readable here ({', '.join(map(str, cfg.tasks))}): epochs={cfg.epochs} "
                          f"counted as --steps {cfg.steps}")
    episodes = cfg.batch_questions * cfg.group_size
    calls = cfg.max_turns  # every turn may send a prompt
    prompt = cfg.max_new_tokens
    if cfg.env_max_tokens > 0:
        reply, reply_note = cfg.env_max_tokens, f"env_max_tokens={cfg.env_max_tokens}"
    else:
        reply = estimate_tokens("x" * cfg.max_response_chars)
        reply_note = (f"no env_max_tokens limit: estimated from max_response_chars={cfg.max_response_chars} "
                      "(replies can be longer)")
    system = estimate_tokens(DEFAULT_ENV_SYSTEM_PROMPT)
    inp = sum(system + (k - 1) * (prompt + reply) + prompt for k in range(1, calls + 1))
    outp = calls * reply
    price, price_note = _dearest_price(cfg)

    def cost(i: float, o: float) -> str:
        return f"{i / 1000 * price[0] + o / 1000 * price[1]:,.4f}" if price else "n/a"

    rows: list[tuple[str, float, float, float]] = [
        ("per episode", calls, inp, outp),
        (f"per step ({episodes} episodes)", calls * episodes, inp * episodes, outp * episodes),
    ]
    n_val, val_note = 0, ""
    if cfg.eval_every > 0:
        questions, val_note = _validation_questions(cfg)
        n_val = int(cfg.eval_before_train) + cfg.steps // cfg.eval_every + int(cfg.steps % cfg.eval_every != 0)
        rows.append((f"per validation ({questions} episodes)", calls * questions, inp * questions, outp * questions))
    total_eps = cfg.steps * episodes + (n_val * questions if n_val else 0)
    label = f"whole run ({cfg.steps} steps" + (f" + {n_val} validations)" if n_val else ")")
    rows.append((label, calls * total_eps, inp * total_eps, outp * total_eps))
    lines = [
        "promptr1 train --dry-run: expected env-LLM use, upper bounds (no model loaded, no call made)",
        f"  env LLM {cfg.env_llm_label()!r}; {cfg.batch_questions} question(s) x {cfg.group_size} rollouts = {episodes} episodes "
        "a step (per process under accelerate launch)",
        f"  up to {calls} calls an episode (max_turns={cfg.max_turns}: every turn may send a prompt, the last one "
        "included)",
        f"  a prompt <= {prompt} tokens (max_new_tokens), a reply <= {reply} tokens ({reply_note}), env system "
        f"prompt ~{system} tokens; the k-th call re-sends the k-1 earlier prompts and replies",
        "  cost: " + (f"${price[0]:g} / ${price[1]:g} per 1,000 input / output tokens ({price_note})" if price
                      else f"n/a: {price_note}"),
        "",
        f"  {'':<38} {'calls':>10} {'input tokens':>14} {'output tokens':>14} {'cost (USD)':>12}",
    ]
    for name, c, i, o in rows:
        lines.append(f"  {name:<38} {_fmt(c):>10} {_fmt(i):>14} {_fmt(o):>14} {cost(i, o):>12}")
    if val_note:
        lines.append(val_note)
    if steps_note:
        lines.append(steps_note)
    if cfg.max_calls is not None:
        per_step = calls * episodes
        lines.append(f"\n  --max-calls {cfg.max_calls}: at the upper bound the budget runs out in step "
                     f"{max(1, math.ceil(cfg.max_calls / per_step))} of {cfg.steps}.")
    if cfg.max_cost is not None and price:
        per_step_cost = (inp * price[0] + outp * price[1]) / 1000 * episodes
        if per_step_cost > 0:
            lines.append(f"  --max-cost {cfg.max_cost:g}: at the upper bound the budget runs out in step "
                         f"{max(1, math.ceil(cfg.max_cost / per_step_cost))} of {cfg.steps}.")
    if cfg.cache:
        lines.append(f"  --cache {cfg.cache} ({cfg.cache_mode}): cached replies cost nothing; these are the calls "
                     "before the cache.")
    return "\n".join(lines)
