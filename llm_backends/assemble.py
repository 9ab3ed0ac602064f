"""The one place that turns a run's env-LLM settings into the backend it uses.

:func:`from_settings` reads a :class:`~promptr1.core.settings.BackendSettings` (every command's settings are one) and builds
``CachedBackend(BudgetedBackend(backend))``: the backend from its spec with the client limits and price the
settings give (``env_max_concurrency``, ``env_rpm``, ``env_tpm``, ``env_price_per_1k``), behind the run's budget
(``max_calls``, ``max_cost``), behind the record/replay cache (``cache``, ``cache_mode``; only when a cache file is
set). ``promptr1 train``, ``eval``, ``chat``, the plain :class:`~promptr1.agents.trainer.GRPOTrainer`, the TRL
example and the verl agent loop all build their env LLM here, so a setting means the same everywhere.

>>> from promptr1.core.settings import BackendSettings
>>> from promptr1.llm_backends import BaseBackend, Completion
>>> class Upper(BaseBackend):
...     def complete(self, messages, **sampling):
...         return Completion(text=messages[-1]["content"].upper())
>>> backend, budget = from_settings(BackendSettings(max_calls=1), given=Upper())
>>> backend.complete([{"role": "user", "content": "hi"}]).text, budget.calls
('HI', 1)
>>> backend.complete([{"role": "user", "content": "again"}])
Traceback (most recent call last):
...
promptr1.llm_backends.base.EnvLLMError: max_calls=1 reached
"""

from __future__ import annotations

import inspect
from typing import Any

from promptr1.core.settings import BackendSettings, ConfigError

from .base import LLMBackend
from .budget import Budget, BudgetedBackend

__all__ = ["BACKEND_OPTIONS", "EnvLLMs", "backend_kwargs", "from_settings"]

#: Settings passed to the env LLM's factory as keyword arguments: setting -> keyword.
BACKEND_OPTIONS = {"env_max_concurrency": "max_concurrency", "env_rpm": "rpm", "env_tpm": "tpm",
                   "env_price_per_1k": "price_per_1k"}


def _keyword_names(factory: Any) -> tuple[set[str], bool]:
    """The keyword parameters a backend factory names, and whether it also takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set(), True  # cannot tell: let the factory decide
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def backend_kwargs(settings: BackendSettings, spec: str | None = None) -> dict[str, Any]:
    """Keyword arguments for the factory of ``spec`` (default ``settings.env_llm``) from ``env_max_concurrency``,
    ``env_rpm``, ``env_tpm`` and ``env_price_per_1k``; a :class:`ConfigError` when the factory takes no such one.

    >>> backend_kwargs(BackendSettings(env_llm="openai:gpt-4o-mini", env_rpm=500, env_price_per_1k=[0.15, 0.6]))
    {'rpm': 500, 'price_per_1k': (0.15, 0.6)}
    >>> backend_kwargs(BackendSettings(env_llm="sim", env_rpm=500))
    Traceback (most recent call last):
    ...
    promptr1.core.settings.ConfigError: --env-rpm is passed to the env LLM as rpm=, but env_llm 'sim' (SimExpert) takes no such argument: concurrency, rate limits and prices are options of backends that call a server (openai:MODEL). Drop --env-rpm, or use such a backend.
    """
    from .specs import BACKENDS

    spec = spec or settings.env_llm
    given: dict[str, Any] = {}
    for setting, keyword in BACKEND_OPTIONS.items():
        value = getattr(settings, setting)
        if value is None or (isinstance(value, list) and not value):
            continue
        given[keyword] = (float(value[0]), float(value[1])) if setting == "env_price_per_1k" else value
    if not given:
        return {}
    factory = BACKENDS.get(spec.partition(":")[0].strip().lower())
    named, var_kw = _keyword_names(factory)
    for setting, keyword in BACKEND_OPTIONS.items():
        if keyword in given and keyword not in named and not var_kw:
            option = "--" + setting.replace("_", "-")
            raise ConfigError(
                f"{option} is passed to the env LLM as {keyword}=, but env_llm {spec!r} "
                f"({getattr(factory, '__name__', type(factory).__name__)}) takes no such argument: concurrency, rate "
                f"limits and prices are options of backends that call a server (openai:MODEL). Drop {option}, or "
                "use such a backend."
            )
    return given


class EnvLLMs(dict):
    """Several env LLMs by name (``env_models``), as :class:`~promptr1.envs.collab_env.PromptCollabEnv` takes them
    (``env_llm={name: backend}``); :meth:`close` closes them all."""

    @property
    def name(self) -> str:
        return "+".join(self)

    def close(self) -> None:
        for backend in self.values():
            close = getattr(backend, "close", None)
            if callable(close):
                close()


def from_settings(settings: BackendSettings, *, given: LLMBackend | None = None, spec: str | None = None,
                  budget: Budget | None = None,
                  price: tuple[float, float] | None = None) -> tuple[Any, Budget]:
    """The env LLM of ``settings`` as a run uses it, and its :class:`~promptr1.llm_backends.budget.Budget`.

    ``given``: an already-built backend, used as is (the budget and the cache still wrap it; it is not closed
    with the result, and limit settings, which configure a backend built here, are refused). ``spec``: another
    env LLM than ``settings.env_llm`` (an evaluation's transfer env LLMs), sharing ``budget`` when given.
    Closing the result closes the cache, the budget wrapper and a backend built here. With ``env_models``
    (several env LLMs) the result is an :class:`EnvLLMs` mapping, each entry built so, all sharing one budget,
    each model's calls priced at its ``env_model_prices`` entry (``price``: USD per 1,000 input / output
    tokens) when it has one.
    """
    from .specs import make_backend

    models = dict(settings.env_models_map()[0]) if getattr(settings, "env_models", None) and spec is None else {}
    if models:  # several env LLMs: each built like a single one, sharing one budget (and the cache file)
        if given is not None:
            raise ConfigError("env_models builds its env LLMs from their specs; an env LLM passed in as an object "
                              "cannot stand for several. Pass env_llm={name: backend, ...} to the env instead.")
        budget = budget if budget is not None else Budget(settings.max_calls, settings.max_cost)
        built = EnvLLMs()
        prices = settings.env_models_map()[1]
        try:
            for name, model_spec in models.items():
                built[name] = from_settings(settings, spec=model_spec, budget=budget, price=prices.get(name))[0]
        except BaseException:
            built.close()
            raise
        return built, budget
    kwargs = backend_kwargs(settings, spec)
    if given is not None and kwargs:
        raise ConfigError(f"{sorted(kwargs)} configure a backend built from --env-llm; an env LLM passed in as an "
                          "object is used as it is. Build it with those arguments instead.")
    inner = given if given is not None else make_backend(spec or settings.env_llm, **kwargs)
    budget = budget if budget is not None else Budget(settings.max_calls, settings.max_cost)
    backend: Any = BudgetedBackend(inner, budget, owns_inner=given is None, price=price)
    if settings.cache and settings.cache_mode != "off":
        from .cache import CachedBackend

        try:  # a damaged cache file, or a missing one to replay, is refused here (CacheFileError, one line)
            backend = CachedBackend(backend, settings.cache, settings.cache_mode)
        except BaseException:
            backend.close()  # the client built above; a backend passed in is not closed
            raise
    return backend, budget
