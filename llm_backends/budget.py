"""A budget of environment-LLM calls and dollars, and a backend wrapper that enforces it.

:class:`Budget` counts calls and cost and refuses new calls once ``max_calls`` or ``max_cost`` is
reached. :class:`BudgetedBackend` wraps any :class:`~promptr1.llm_backends.LLMBackend`: every call
first asks the budget; a refused call raises :class:`~promptr1.llm_backends.EnvLLMError` with
``kind="budget"``, so the environment flags the episode (``info["env_error"]`` starts with
``"budget:"``, see :func:`is_budget_stop`) and whoever plays it can drop it. Because it is a
backend, the same budget can guard anything that calls an environment LLM (evaluation today,
training tomorrow).

Put it *inside* a record/replay cache (``CachedBackend(BudgetedBackend(raw, budget), path)``):
then cache hits never reach the budget and only real calls are counted. Calls already in flight
when the limit is reached finish, so the cost can exceed ``max_cost`` by at most the calls in
flight. A call that fails still costs what its attempts were billed for: the backend reports it on
the :class:`~promptr1.llm_backends.EnvLLMError` (``cost_usd``), and the budget adds it.

>>> from promptr1.llm_backends import Completion
>>> from promptr1.llm_backends.base import BaseBackend
>>> class Paid(BaseBackend):
...     name = "paid"
...     def complete(self, messages, **sampling):
...         return Completion(text="ok", cost_usd=0.25)
>>> budget = Budget(max_calls=2)
>>> b = BudgetedBackend(Paid(), budget)
>>> [b.complete([{"role": "user", "content": "hi"}]).text for _ in range(2)]
['ok', 'ok']
>>> try:
...     b.complete([{"role": "user", "content": "hi"}])
... except EnvLLMError as exc:
...     print(exc.kind, "|", exc)
budget | max_calls=2 reached
>>> budget.calls, budget.cost, budget.stop_reason
(2, 0.5, 'max_calls=2 reached')
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .base import ATTEMPT_BILLING, Completion, EnvLLMError, LLMBackend, Message
from .pricing import Price, call_cost, check_price, dollars

__all__ = ["BUDGET_ERROR_KIND", "Budget", "BudgetedBackend", "is_budget_stop"]

#: ``EnvLLMError.kind`` of a call the budget refused.
BUDGET_ERROR_KIND = "budget"


def is_budget_stop(env_error: str | None) -> bool:
    """True when an episode's ``env_error`` says the budget refused its call (not a real failure).

    >>> is_budget_stop("budget: max_calls=3 reached"), is_budget_stop("timeout: slow"), is_budget_stop(None)
    (True, False, False)
    """
    return bool(env_error) and env_error.startswith(BUDGET_ERROR_KIND + ":")  # type: ignore[union-attr]


class Budget:
    """Counts uncached env-LLM calls (failed ones too: they were made) and their cost; thread-safe.

    ``max_calls`` / ``max_cost`` (USD): None means no limit. Once a limit is reached,
    :attr:`stop_reason` says which, and :meth:`reserve` refuses every later call.
    """

    def __init__(self, max_calls: int | None = None, max_cost: float | None = None) -> None:
        if max_calls is not None and max_calls < 0:
            raise ValueError(f"max_calls must be >= 0 or None, got {max_calls!r}.")
        if max_cost is not None and max_cost < 0:
            raise ValueError(f"max_cost must be >= 0 or None, got {max_cost!r}.")
        self.max_calls, self.max_cost = max_calls, max_cost
        self.calls, self.cost, self.in_flight = 0, 0.0, 0
        self.stop_reason: str | None = None
        self._lock = threading.Lock()

    def reserve(self) -> bool:
        """Ask for one call; False (and :attr:`stop_reason` set) once a limit is reached."""
        with self._lock:
            if self.stop_reason is None:
                if self.max_calls is not None and self.calls + self.in_flight >= self.max_calls:
                    self.stop_reason = f"max_calls={self.max_calls} reached"
                elif self.max_cost is not None and self.cost >= self.max_cost:
                    self.stop_reason = f"max_cost=${self.max_cost:g} reached"
            if self.stop_reason is not None:
                return False
            self.in_flight += 1
            return True

    def settle(self, *, cached: bool = False, cost: float = 0.0) -> None:
        """Close a reserved call: count it (unless a cache answered it) and add its cost; a cost that reaches
        ``max_cost`` sets :attr:`stop_reason` now (so a run stops at the end of the step that spent it)."""
        with self._lock:
            self.in_flight -= 1
            if not cached:
                self.calls += 1
            self.cost += float(cost or 0.0)
            if self.stop_reason is None and self.max_cost is not None and self.cost >= self.max_cost:
                self.stop_reason = f"max_cost=${self.max_cost:g} reached"

    def charge(self, cost: float) -> str | None:
        """Add what a failed attempt of a call in flight was billed for; returns :attr:`stop_reason` once
        ``max_cost`` is reached (then the call makes no further attempt), else None."""
        with self._lock:
            self.cost += float(cost or 0.0)
            if self.stop_reason is None and self.max_cost is not None and self.cost >= self.max_cost:
                self.stop_reason = f"max_cost=${self.max_cost:g} reached"
            return self.stop_reason

    def __repr__(self) -> str:
        return (f"Budget(calls={self.calls}/{self.max_calls}, cost=${self.cost:.4f}/{self.max_cost}, "
                f"stop_reason={self.stop_reason!r})")


class BudgetedBackend:
    """``inner`` behind ``budget``: a refused call raises ``EnvLLMError(kind="budget")``.

    ``price`` (USD per 1,000 input / output tokens; a model's ``env_model_prices``) prices the calls; without
    one a call costs what the backend reports (:func:`~promptr1.llm_backends.pricing.call_cost`, the function
    the env's reward and the report count with too). Every failed attempt of a call that retries is charged as
    it happens (:data:`~promptr1.llm_backends.base.ATTEMPT_BILLING`), and once ``max_cost`` is reached the
    call stops retrying.

    ``name``, ``model`` and ``default_sampling`` are the inner backend's, so a cache keyed on them
    sees no difference. :meth:`close` closes the inner backend only when ``owns_inner`` is True.
    """

    def __init__(self, inner: LLMBackend, budget: Budget, *, owns_inner: bool = True,
                 price: Sequence[float] | None = None) -> None:
        self.inner = inner
        self.budget = budget
        self.owns_inner = owns_inner
        self.price: Price | None = (None if price is None
                                    else check_price(price, what="BudgetedBackend(price=...)"))
        self.name = getattr(inner, "name", type(inner).__name__)
        self.model = str(getattr(inner, "model", "") or getattr(inner, "model_id", "") or "")
        self.deterministic = bool(getattr(inner, "deterministic", False))

    def __getattr__(self, item: str) -> Any:
        if item.startswith("_") or item in ("inner", "budget", "price"):
            raise AttributeError(item)
        return getattr(self.inner, item)

    def _refused(self) -> EnvLLMError:
        return EnvLLMError(self.budget.stop_reason or "budget exhausted", kind=BUDGET_ERROR_KIND, attempts=0)

    def _attempt_hook(self, charged: list[float]) -> Any:
        """The :data:`ATTEMPT_BILLING` hook of one call: charges each failed attempt at once (``charged[0]``
        adds them up) and says stop once the budget's ``max_cost`` is reached."""

        def hook(prompt_tokens: int, completion_tokens: int, cost_usd: float) -> str | None:
            cost = dollars(prompt_tokens, completion_tokens, cost_usd, self.price)
            charged[0] += cost
            return self.budget.charge(cost)

        return hook

    def complete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        if not self.budget.reserve():
            raise self._refused()
        result: Completion | EnvLLMError | None = None
        charged = [0.0]
        token = ATTEMPT_BILLING.set(self._attempt_hook(charged))
        try:
            result = self.inner.complete(messages, **sampling)
            return result
        except EnvLLMError as e:  # failed attempts that reported usage were billed
            result = e
            raise
        finally:
            ATTEMPT_BILLING.reset(token)
            self._settle(result, charged[0])

    async def acomplete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        if not self.budget.reserve():
            raise self._refused()
        result: Completion | EnvLLMError | None = None
        charged = [0.0]
        token = ATTEMPT_BILLING.set(self._attempt_hook(charged))
        try:
            result = await self.inner.acomplete(messages, **sampling)
            return result
        except EnvLLMError as e:
            result = e
            raise
        finally:
            ATTEMPT_BILLING.reset(token)
            self._settle(result, charged[0])

    def _settle(self, result: Completion | EnvLLMError | None, charged: float) -> None:
        """Count the call and add its cost (:func:`call_cost`) less what its failed attempts were already
        charged."""
        cached = isinstance(result, Completion) and bool(result.cached)
        cost = 0.0 if cached else max(0.0, call_cost(result, self.price) - charged)
        self.budget.settle(cached=cached, cost=cost)

    def close(self) -> None:
        if self.owns_inner:
            close = getattr(self.inner, "close", None)
            if callable(close):
                close()

    def __repr__(self) -> str:
        return f"BudgetedBackend({self.inner!r}, {self.budget!r})"
