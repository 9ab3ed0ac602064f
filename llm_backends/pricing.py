"""What one env-LLM call costs, in one place.

A call's dollars are its billed tokens at the model's price when the run gives one (``env_model_prices``, the
env's ``model_prices``), else the backend's own accounting (``Completion.cost_usd``, e.g. ``openai:`` with
``price_per_1k``). The budget (:class:`~promptr1.llm_backends.budget.BudgetedBackend`), the env's episode cost
and cost-aware reward, the evaluation's records and report, the trainer's TensorBoard scalars and ``train
--dry-run`` all count with :func:`call_cost` / :func:`dollars`, so ``--max-cost`` stops a run on the dollars
its report shows.

The billed tokens of a call are those of every attempt: a reply that succeeded after failed attempts carries
what those were billed for in ``extra["failed_attempts_usage"]``, a call that failed carries it on its
:class:`~promptr1.llm_backends.EnvLLMError`.

>>> from promptr1.llm_backends import Completion
>>> c = Completion(text="hi", prompt_tokens=1000, completion_tokens=500, cost_usd=0.01)
>>> call_cost(c), call_cost(c, (1.0, 2.0))
(0.01, 2.0)
>>> check_price((0.15, float("inf")), what="model_prices['strong']")
Traceback (most recent call last):
...
ValueError: model_prices['strong'] must be two finite numbers >= 0, USD per 1,000 input / output tokens (e.g. (0.15, 0.6)); got (0.15, inf).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Completion, EnvLLMError

__all__ = ["Price", "billed_usage", "call_cost", "check_money", "check_price", "check_prices", "dollars"]

log = logging.getLogger(__name__)

#: USD per 1,000 input tokens and per 1,000 output tokens.
Price = tuple[float, float]


def check_money(value: Any, what: str, *, positive: bool = False) -> float:
    """``value`` as a float if it is a finite number ``>= 0`` (``> 0`` with ``positive``), else a
    ``ValueError`` naming ``what``: a price, cost weight or dollar amount that is negative, NaN or infinite
    would pay the agent for calling or turn rewards into NaN. The env, the budget and the backends check money
    with it (the settings with :func:`promptr1.core.settings.check_amount`).

    >>> check_money("0.15", "price")
    0.15
    >>> check_money(float("inf"), "cost_weight")
    Traceback (most recent call last):
    ...
    ValueError: cost_weight must be a finite number >= 0; got inf.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{what} must be a finite number {'> 0' if positive else '>= 0'}; got {value!r}.")
    return number


def check_price(value: Any, *, what: str = "price") -> Price:
    """``value`` as a :data:`Price` if it is two finite numbers ``>= 0``, else a ``ValueError`` naming
    ``what``."""
    try:
        pair = tuple(value)
        if len(pair) != 2:
            raise ValueError
        return (check_money(pair[0], what), check_money(pair[1], what))
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two finite numbers >= 0, USD per 1,000 input / output tokens "
                         f"(e.g. (0.15, 0.6)); got {value!r}.") from None


def check_prices(prices: Mapping[str, Sequence[float]] | None, *,
                 what: str = "model_prices") -> dict[str, Price]:
    """``{name: price}`` with every price checked by :func:`check_price`."""
    return {str(k): check_price(v, what=f"{what}[{str(k)!r}]") for k, v in dict(prices or {}).items()}


#: More tokens than any call is billed for: a count above it is not a count (the ``openai`` backend already
#: refuses usage over 100x a request's token budget).
MAX_TOKENS_COUNTED = 10**12


def _tokens(n: Any) -> int:
    """A token count as an int (0, with a warning, for anything that is not a whole number in [0, 1e12])."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        ok = False
    elif isinstance(n, float):
        ok = math.isfinite(n) and n.is_integer() and 0 <= n <= MAX_TOKENS_COUNTED
    else:
        ok = 0 <= n <= MAX_TOKENS_COUNTED
    if not ok:
        if n:
            log.warning("a backend reported %.40r tokens for a call, not a token count; counted as 0", n)
        return 0
    return int(n)


def _backend_cost(cost: Any) -> float:
    """A backend's own cost as a finite float >= 0 (0 when it reports none, or one that cannot be money)."""
    try:
        value = float(cost or 0.0)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not math.isfinite(value) or value < 0:
        log.warning("a backend reported a cost of %r USD for a call; counted as $0", cost)
        return 0.0
    return value


def billed_usage(result: Completion | EnvLLMError | None) -> tuple[int, int, float]:
    """``(prompt_tokens, completion_tokens, backend_cost_usd)`` that every attempt of a call was billed
    for."""
    if result is None:
        return 0, 0, 0.0
    p, c = _tokens(getattr(result, "prompt_tokens", 0)), _tokens(getattr(result, "completion_tokens", 0))
    extra = getattr(result, "extra", None)
    failed = extra.get("failed_attempts_usage") if isinstance(extra, Mapping) else None
    if isinstance(failed, Mapping):
        p += _tokens(failed.get("prompt_tokens", 0))
        c += _tokens(failed.get("completion_tokens", 0))
    return p, c, _backend_cost(getattr(result, "cost_usd", 0.0))


def dollars(prompt_tokens: int, completion_tokens: int, backend_cost: float | None,
            price: Price | None) -> float:
    """Dollars of billed tokens: at ``price`` (USD per 1,000 input / output tokens) when given, else
    ``backend_cost`` (the backend's own accounting; 0 when it has none). Always finite and >= 0.

    >>> dollars(2000, 1000, 0.5, None), dollars(2000, 1000, 0.5, (0.15, 0.6))
    (0.5, 0.9)
    """
    if price is None:
        return _backend_cost(backend_cost)
    usd = (_tokens(prompt_tokens) * float(price[0]) + _tokens(completion_tokens) * float(price[1])) / 1000.0
    return round(usd, 12)


def call_cost(result: Completion | EnvLLMError | None, price: Price | None = None) -> float:
    """Dollars of one call, a reply or a failure, every attempt included: its billed tokens at ``price`` (the
    model's, from ``env_model_prices``) when given, else the backend's own cost (``cost_usd``)."""
    return dollars(*billed_usage(result), price)
