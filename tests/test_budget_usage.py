"""--max-cost counts what failed calls were billed for (issue 18, item 9)."""

from __future__ import annotations

import asyncio

import pytest
from promptr1.llm_backends.budget import Budget, BudgetedBackend
from promptr1.llm_backends.base import BaseBackend, EnvLLMError
from promptr1.llm_backends.openai_backend import OpenAIBackend

from promptr1.testing.fake_server import FakeOpenAIServer

MSGS = [{"role": "user", "content": "one two three four"}]
FAST = dict(backoff_base_s=0.01, backoff_max_s=0.04, timeout_s=5.0, deadline_s=20.0)


class _FailsBilled(BaseBackend):
    """Always fails, reporting what its attempts were billed for."""

    name = "fails"

    def complete(self, messages, **sampling):
        raise EnvLLMError("cut off", kind="max_tokens", prompt_tokens=40, completion_tokens=612, cost_usd=0.25)


def test_a_failed_call_adds_its_billed_cost_sync_and_async():
    budget = Budget(max_cost=0.6)
    b = BudgetedBackend(_FailsBilled(), budget)
    for _ in range(2):
        with pytest.raises(EnvLLMError, match="cut off"):
            b.complete(MSGS)
    assert (budget.calls, budget.cost, budget.in_flight) == (2, pytest.approx(0.5), 0)

    async def once():
        return await b.acomplete(MSGS)

    with pytest.raises(EnvLLMError, match="cut off"):
        asyncio.run(once())
    assert budget.cost == pytest.approx(0.75) and budget.in_flight == 0
    with pytest.raises(EnvLLMError) as ei:  # over max_cost: refused before any call
        b.complete(MSGS)
    assert ei.value.kind == "budget" and budget.calls == 3


def test_max_cost_stops_a_run_whose_calls_all_fail_with_billed_usage():
    # every reply is empty and cut at max_tokens: billed (7 + 100 tokens), but never a Completion
    with FakeOpenAIServer(fault_rate=1.0, faults=("lengthcut",)) as srv:
        inner = OpenAIBackend("fake-model", base_url=srv.base_url, price_per_1k=(1.0, 1.0), max_retries=7, **FAST)
        budget = Budget(max_cost=0.25)
        b = BudgetedBackend(inner, budget)
        kinds = []
        for _ in range(5):
            try:
                b.complete(MSGS + [{"role": "user", "content": "a b c"}], max_tokens=100)
            except EnvLLMError as e:
                kinds.append(e.kind)
        # each call: one attempt (not retried), 7 prompt + 100 completion tokens = $0.107
        assert kinds == ["max_tokens", "max_tokens", "max_tokens", "budget", "budget"]
        assert len(srv.chat_records()) == 3
        assert budget.cost == pytest.approx(3 * 0.107) and budget.stop_reason == "max_cost=$0.25 reached"
        inner.close()


def test_a_success_after_billed_failures_costs_all_of_them():
    with FakeOpenAIServer(schedule=["emptytext", "emptytext", None]) as srv:
        inner = OpenAIBackend("fake-model", base_url=srv.base_url, price_per_1k=(1.0, 1.0), **FAST)
        budget = Budget()
        c = BudgetedBackend(inner, budget).complete(MSGS)
        assert c.attempts == 3
        assert budget.cost == pytest.approx((3 * 4 + 4) / 1000)  # three prompts of 4 tokens, one reply of 4
        inner.close()
