"""The money cap holds for every priced model, and the backend's error contract (issue 25, items 1-5, 7, 10,
11)."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import pytest
from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.tasks import Task
from promptr1.llm_backends import Completion, EnvLLMError
from promptr1.llm_backends.base import error_summary
from promptr1.llm_backends.budget import Budget, BudgetedBackend, is_budget_stop
from promptr1.llm_backends.openai_backend import OpenAIBackend
from promptr1.llm_backends.pricing import call_cost

from promptr1.core.settings import ConfigError, RunSettings, load_config
from promptr1.testing.fake_server import FakeOpenAIServer
from promptr1.testing.scripted import ScriptedBackend

MSGS = [{"role": "user", "content": "one two three four"}]
FAST = dict(backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=5.0, deadline_s=20.0)
TASK = Task("Who founded Vantrel Corp?", ("Mira Osk",), id="t0")
ASK = "<think>a</think><interaction_prompt>{}</interaction_prompt>"


def fixed_usage(prompt_tokens, completion_tokens):
    """A server rewrite that reports this usage on every reply."""

    def rewrite(payload, body):
        payload["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        return payload

    return rewrite


def eval_argv(tmp_path, *extra):
    return ["eval", "--tasks", "synthetic", "--methods", "direct", "--limit", "4", "--concurrency", "1",
            "--chart", "false", "--progress", "false", "--output-dir", str(tmp_path / "eval"), *extra]


# ------------------------------------------------------------------ 1. one price, everywhere
def test_call_cost_prices_every_attempt_at_the_models_price_else_the_backends_own():
    c = Completion(text="ok", prompt_tokens=1000, completion_tokens=500, cost_usd=0.01,
                   extra={"failed_attempts_usage": {"prompt_tokens": 1000, "completion_tokens": 0,
                                                    "cost_usd": 0.004}})
    assert call_cost(c) == 0.01  # the backend's own accounting (failed attempts included)
    assert call_cost(c, (1.0, 2.0)) == pytest.approx(2.0 + 1.0)  # both attempts' prompts, one reply
    err = EnvLLMError("cut", kind="max_tokens", prompt_tokens=40, completion_tokens=612, cost_usd=0.25)
    assert call_cost(err) == 0.25 and call_cost(err, (1.0, 1.0)) == pytest.approx(0.652)
    # garbage from a backend is never money
    assert call_cost(Completion(text="x", cost_usd=float("nan"))) == 0.0
    assert call_cost(Completion(text="x", prompt_tokens=10**400), (1.0, 1.0)) == 0.0


def test_max_cost_counts_env_model_prices_in_an_eval(tmp_path, monkeypatch):
    """The issue's case: two openai: models priced 1000:1000 and --max-cost tiny; the budget used to count
    $0."""
    from promptr1.evaluation import EvalConfig, run_evaluation

    from promptr1.testing.agents import ScriptedAgentPolicy

    turns = ["<think>a</think><interaction_prompt>[b] What is 3 + 4?</interaction_prompt>",
             "<think>b</think><interaction_prompt>What is 3 + 4?</interaction_prompt>",
             "<think>c</think><answer>7</answer>"]
    with FakeOpenAIServer(rewrite=fixed_usage(1, 1)) as srv:  # every call: 2 tokens at $1 each = $2
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        cfg = EvalConfig(tasks=["synthetic"], methods=["agent:scripted"], env_llm="openai:fake-model",
                         limit=6,
                         batch_size=2, chart=False, progress=False, output_dir=str(tmp_path),
                         env_models=["a=openai:fake-model", "b=openai:fake-model"],
                         env_model_prices=["a=1000:1000", "b=1000:1000"], max_cost=0.001)
        result = run_evaluation(cfg, agents={"scripted": ScriptedAgentPolicy(turns)})
        made = len(srv.chat_records())
    assert result.stop_reason == "max_cost=$0.001 reached" and result.partial
    assert made == 2  # the two calls in flight when the cap was reached; none after
    assert result.calls == made and result.cost_usd == pytest.approx(2.0 * made)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cost_usd"] == pytest.approx(2.0 * made) and summary["budget_stopped"] is True


def test_the_env_reward_and_the_budget_count_the_same_dollars():
    budget = Budget()
    strong = BudgetedBackend(ScriptedBackend(["strong says Mira Osk."]), budget, price=(0.01, 0.02))
    cheap = BudgetedBackend(ScriptedBackend(["cheap says Mira Osk."]), budget, price=(0.001, 0.002))
    env = PromptCollabEnv(task=[TASK], env_llm={"cheap": cheap, "strong": strong},
                          model_prices={"cheap": (0.001, 0.002), "strong": (0.01, 0.02)},
                          reward_variant="cost_aware", cost_weight=1.0)
    env.reset(seed=0)
    env.step(ASK.format("[strong] Who founded Vantrel Corp?"))
    env.step(ASK.format("[cheap] Who founded Vantrel Corp?"))
    *_, info = env.step("<think>b</think><answer>Mira Osk</answer>")
    assert budget.cost > 0 and info["episode"]["env_llm_cost_usd"] == pytest.approx(budget.cost)
    assert info["reward_components"]["cost_usd"] == pytest.approx(budget.cost)


def test_from_settings_prices_each_model_of_env_models():
    from promptr1.llm_backends import from_settings

    settings = RunSettings(env_models=["cheap=sim", "strong=sim-strong"],
                           env_model_prices=["strong=1000:1000"])
    backends, budget = from_settings(settings)
    backends["cheap"].complete([{"role": "user", "content": "Who founded Vantrel Corp?"}])
    assert budget.cost == 0.0  # sim reports no cost and has no price
    c = backends["strong"].complete([{"role": "user", "content": "Who founded Vantrel Corp?"}])
    assert budget.cost == pytest.approx(c.prompt_tokens + c.completion_tokens) and budget.cost > 0
    backends.close()


def test_dry_run_estimates_with_env_model_prices(capsys):
    from promptr1.agents.config import GRPOConfig
    from promptr1.commands.dry_run import dry_run_report

    cfg = GRPOConfig(steps=2, batch_questions=1, group_size=2, max_turns=2, eval_every=0, max_cost=1.0,
                     env_models=["cheap=sim", "strong=sim-strong"],
                     env_model_prices=["cheap=1:4", "strong=3:2"])
    report = dry_run_report(cfg)
    assert "$3 / $4 per 1,000 input / output tokens" in report  # the dearest input and output prices
    episode = next(line for line in report.splitlines() if line.strip().startswith("per episode"))
    _, calls, inp, outp, usd = episode.split()[:1] + episode.split()[2:]
    expected = int(inp.replace(",", "")) / 1000 * 3 + int(outp.replace(",", "")) / 1000 * 4
    assert float(usd.replace(",", "")) == pytest.approx(expected, abs=1e-4)
    assert "--max-cost 1: at the upper bound the budget runs out in step 1 of 2." in report


# ------------------------------------------------------------------ 2. retries stop at the cap
def test_each_billed_attempt_is_settled_and_retries_stop_at_max_cost():
    # every reply is empty but billed 4 prompt tokens: $1 an attempt at 250:250 per 1k
    with FakeOpenAIServer(fault_rate=1.0, faults=("emptytext",)) as srv:
        inner = OpenAIBackend("fake-model", base_url=srv.base_url, price_per_1k=(250.0, 250.0), max_retries=7,
                              **FAST)
        budget = Budget(max_cost=2.0)
        with pytest.raises(EnvLLMError) as ei:
            BudgetedBackend(inner, budget).complete(MSGS)
        assert len(srv.chat_records()) == 2  # not 8: the second attempt reached the cap
        inner.close()
    assert ei.value.kind == "budget" and is_budget_stop(f"{ei.value.kind}: {ei.value}")
    assert budget.cost == pytest.approx(2.0) and budget.calls == 1 and budget.in_flight == 0
    assert budget.stop_reason == "max_cost=$2 reached"


def test_attempts_are_charged_at_the_models_price_async_too():
    with FakeOpenAIServer(schedule=["emptytext", "emptytext", None]) as srv:
        inner = OpenAIBackend("fake-model", base_url=srv.base_url, **FAST)  # no price of its own
        budget = Budget(max_cost=100.0)
        b = BudgetedBackend(inner, budget, price=(1000.0, 1000.0))
        c = asyncio.run(b.acomplete(MSGS))
        inner.close()
    assert c.attempts == 3 and budget.cost == pytest.approx(3 * 4 + 4)  # three prompts of 4 tokens, 1 reply


# ------------------------------------------------------------------ 3. a budget stop is not a failure
def test_an_eval_stopped_by_max_cost_exits_3_with_budget_reached(tmp_path, monkeypatch, capsys):
    from promptr1.commands.cli import main

    # each call fails at once (cut at max_tokens, billed): the first episode fails, the budget stops the rest
    with FakeOpenAIServer(fault_rate=1.0, faults=("lengthcut",)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        rc = main(eval_argv(tmp_path, "--env-llm", "openai:fake-model", "--env-price-per-1k", "1000", "1000",
                            "--max-cost", "2"))
    err = capsys.readouterr().err
    assert rc == 3 and "budget reached (max_cost=$2 reached)" in err and "FAILED" not in err
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "budget reached" in report and "FAILED" not in report
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["status"].startswith("PARTIAL: budget reached") and summary["budget_stopped"]


# ------------------------------------------------------------------ 4. money settings are finite and >= 0
@pytest.mark.parametrize("overrides", [
    ["--cost-weight", "inf"], ["--cost-weight", "nan"], ["--cost-weight", "-1"],
    ["--cost-reference-usd", "inf"], ["--cost-reference-usd", "0"],
    ["--env-price-per-1k", "inf", "1"], ["--env-price-per-1k", "-1", "1"], ["--max-cost", "nan"],
    ["--env-models", "a=sim", "b=sim", "--env-model-prices", "b=inf:1"],
    ["--env-models", "a=sim", "--env-model-prices", "a=-5:-5"],
])
def test_money_flags_must_be_finite_and_not_negative(overrides):
    with pytest.raises(ConfigError, match="finite"):
        load_config(RunSettings, overrides=overrides)


def test_money_in_yaml_is_checked_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("cost_weight: .inf\n")
    with pytest.raises(ConfigError, match=r"cost_weight \(--cost-weight\) must be a finite number >= 0"):
        load_config(RunSettings, path)


@pytest.mark.parametrize("kwargs, match", [
    (dict(model_prices={"cheap": (-5, -5)}), r"model_prices\['cheap'\] must be two finite numbers >= 0"),
    (dict(model_prices={"cheap": (float("inf"), 1)}), "finite"),
    (dict(cost_weight=float("inf"), reward_variant="cost_aware"), r"cost_weight \(--cost-weight\) must be a finite number"),
    (dict(cost_weight=-1.0), r"cost_weight \(--cost-weight\) must be a finite number"),
    (dict(cost_reference_usd=float("nan"), reward_variant="cost_aware"), "cost_reference_usd"),
])
def test_the_env_refuses_money_that_is_not_money(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PromptCollabEnv(task=[TASK], env_llm={"cheap": ScriptedBackend(["x"]),
                                              "strong": ScriptedBackend(["y"])}, **kwargs)


def test_the_openai_backend_refuses_a_price_that_is_not_money():
    with pytest.raises(ValueError, match="price_per_1k must be two finite numbers"):
        OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", price_per_1k=(float("inf"), 1.0))
    with pytest.raises(ValueError, match="finite"):
        OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", price_per_1k={"m": (-1.0, 1.0)})


# ------------------------------------------------------------------ 5 and 7. usage and bodies from the server
@pytest.mark.parametrize("usage", [
    (int("4" * 400), 3), (3, 1e308), (1e20, 1), (-1, 2), (1.5, 2), ("12", 2), (True, 2), (float("inf"), 1),
], ids=["400-digits", "1e308", "1e20", "negative", "fraction", "string", "bool", "inf"])
def test_usage_that_is_not_a_bounded_count_is_a_malformed_reply_counted_at_the_estimate(usage, caplog):
    rewrite = fixed_usage(*usage)
    if usage[0] == float("inf"):  # JSON has no inf: a number past float's range reads back as inf
        def rewrite(payload, body):
            payload["usage"] = {"prompt_tokens": "INF", "completion_tokens": 1}
            return json.dumps(payload).encode().replace(b'"INF"', b"1e999")
    with FakeOpenAIServer(rewrite=rewrite) as srv:
        inner = OpenAIBackend("fake-model", base_url=srv.base_url, price_per_1k=(1.0, 1.0), max_retries=1,
                              **FAST)
        budget = Budget()
        with caplog.at_level(logging.WARNING), pytest.raises(EnvLLMError) as ei:
            BudgetedBackend(inner, budget).complete(MSGS, max_tokens=10)
        inner.close()
    assert ei.value.kind == "malformed_reply" and "usage" in str(ei.value)
    # each of the 2 attempts counted at the request's estimate: 5 prompt tokens (18 characters) + max_tokens
    # 10
    assert (ei.value.prompt_tokens, ei.value.completion_tokens) == (2 * 5, 2 * 10)
    assert budget.cost == pytest.approx(2 * 15 / 1000) and math.isfinite(budget.cost)
    assert "not a token count" in caplog.text and "counted at its estimate" in caplog.text


def test_huge_usage_never_reaches_the_env_or_the_reward(caplog):
    with FakeOpenAIServer(rewrite=fixed_usage(10**20, 1)) as srv:
        backend = OpenAIBackend("fake-model", base_url=srv.base_url, max_retries=0, **FAST)
        env = PromptCollabEnv(task=[TASK], env_llm={"m": backend}, model_prices={"m": (1.0, 1.0)},
                              reward_variant="cost_aware", cost_weight=1.0)
        env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(ASK.format("Who founded Vantrel Corp?"))
        env.close()
    assert truncated and info["env_error"].startswith("malformed_reply:")
    assert math.isfinite(reward) and reward > -1.5  # not -1e17
    assert info["episode"]["env_llm_cost_usd"] < 1.0


def test_a_usage_within_the_bound_is_believed():
    with FakeOpenAIServer(rewrite=fixed_usage(900, 40)) as srv:  # more than the estimate, less than 100x
        inner = OpenAIBackend("fake-model", base_url=srv.base_url, price_per_1k=(1.0, 1.0), **FAST)
        c = inner.complete(MSGS, max_tokens=10)
        inner.close()
    assert (c.prompt_tokens, c.completion_tokens) == (900, 40) and c.cost_usd == pytest.approx(0.94)


@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"choices": [{"message": {"content": [{"text": 5}]}}]}',
    b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": ' + b"9" * 5000 + b"}}",
    b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 1e999}}',
], ids=["nested-100k", "nested-choices", "content-part-not-text", "usage-5000-digits", "usage-1e999"])
def test_every_reply_body_failure_is_an_env_error_with_a_kind(body):
    with FakeOpenAIServer(rewrite=lambda payload, req: body) as srv:
        inner = OpenAIBackend("fake-model", base_url=srv.base_url, max_retries=1, price_per_1k=(1.0, 1.0),
                              **FAST)
        with pytest.raises(EnvLLMError) as ei:
            inner.complete(MSGS)
        with pytest.raises(EnvLLMError):
            asyncio.run(inner.acomplete(MSGS))
        inner.close()
    assert ei.value.kind in ("malformed_reply", "empty_reply")


# ------------------------------------------------------------------ 10. names the agent can write; no URL
# logins
@pytest.mark.parametrize("name", ["my model", "a]", "[x", "-lead", "ü"])
def test_env_model_names_must_be_writable_as_brackets(name):
    with pytest.raises(ConfigError, match="cannot be named by the agent"):
        RunSettings(env_models=[f"{name}=sim", "ok=sim"])
    with pytest.raises(ValueError, match="cannot be named by the agent"):
        PromptCollabEnv(task=[TASK], env_llm={name: ScriptedBackend(["x"]), "ok": ScriptedBackend(["y"])})


def test_every_accepted_name_is_reachable_by_the_agent():
    env = PromptCollabEnv(task=[TASK], env_llm={"gpt-4o.mini_2": ScriptedBackend(["small"]),
                                                 "B": ScriptedBackend(["big"])}, max_turns=3)
    env.reset(seed=0)
    obs, *_ = env.step(ASK.format("[B] Who founded Vantrel Corp?"))
    assert "big" in obs
    obs, *_ = env.step(ASK.format("[gpt-4o.mini_2] Who?"))
    assert "small" in obs


def test_a_base_url_with_a_login_is_refused_without_showing_it(monkeypatch):
    with pytest.raises(ValueError, match="user name or password") as ei:
        OpenAIBackend("m", base_url="http://bob:hunter2secret@127.0.0.1:8000/v1")
    text = str(ei.value)
    assert "hunter2secret" not in text and "bob" not in text and "127.0.0.1:8000" in text
    monkeypatch.setenv("OPENAI_BASE_URL", "https://bob:hunter2secret@example.com/v1")
    with pytest.raises(ValueError, match="OPENAI_BASE_URL") as ei:
        OpenAIBackend("m")
    assert "hunter2secret" not in str(ei.value)


# ------------------------------------------------------------------ 11. whole messages, grouped by kind
def test_a_down_servers_errors_are_grouped_by_kind_and_kept_whole(tmp_path):
    import socket

    from promptr1.evaluation.results import EvalResult

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    backend = OpenAIBackend("fake-model", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, **FAST)
    errors = []
    for _ in range(3):
        with pytest.raises(EnvLLMError) as ei:
            backend.complete(MSGS)
        errors.append(f"{ei.value.kind}: {ei.value}")
    backend.close()
    records = [{"method": "direct", "env_llm": "openai:fake-model", "env_error": e} for e in errors]
    why = EvalResult([], [], records, 3).failed_columns()["direct @ openai:fake-model"]
    assert why.startswith("all 3 episodes failed on the env LLM: 3 x connection (last: ")
    assert errors[-1] in why and why.count(" x ") == 1  # one group, its message whole
    assert "or the HTTP response was malformed" in errors[-1] and errors[-1].endswith(")")


def test_error_summary_groups_messages_that_differ_only_in_seconds():
    errs = [f"timeout: openai:m failed after 7 attempt(s) in {s:.2f} s; last error timeout"
            for s in (60.01, 60.02)]
    summary = error_summary([*errs, "server_error: HTTP 500"])
    assert summary.startswith(f"2 x timeout (last: {errs[1]!r}); 1 x ")


class _FailsBilled:
    """An env LLM whose every call fails, billed $0.25 (a reply cut at max_tokens)."""

    name = "fails-billed"

    def __init__(self):
        self.calls = 0

    def complete(self, messages, **sampling):
        self.calls += 1
        raise EnvLLMError("cut off", kind="max_tokens", prompt_tokens=40, completion_tokens=612,
                          cost_usd=0.25)

    async def acomplete(self, messages, **sampling):
        return self.complete(messages, **sampling)


def test_a_training_run_stopped_by_max_cost_exits_3_even_when_its_calls_failed(tmp_path, always_prompt,
                                                                                capsys):
    from promptr1.agents.config import GRPOConfig

    from promptr1.commands.train import BUDGET_EXIT_CODE, run_training
    from promptr1.testing.tiny_model import tiny_model_path

    inner = _FailsBilled()
    # step 1: two episodes of one call each, both failed and billed $0.25: every episode failed, and the
    # budget ran out
    cfg = GRPOConfig(model=str(tiny_model_path()), steps=2, output_dir=str(tmp_path / "run"),
                     batch_questions=1, group_size=2, max_new_tokens=32, max_turns=1, progress=False,
                     max_seq_len=768, kl_coef=0.0,
                     num_transcripts=0, eval_every=0, eval_episodes=0, max_cost=0.4, env_error_patience=1)
    assert run_training(cfg, env_llm=inner) == BUDGET_EXIT_CODE  # not FAILED (1): the budget stopped it too
    assert inner.calls == 2
    out = capsys.readouterr()
    assert "budget reached (max_cost=$0.4 reached) at step 1 of 2; before it, training stopped" in out.out
    assert "FAILED" not in out.err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "budget-stopped" and summary["env_llm_cost_usd"] == pytest.approx(0.5)
