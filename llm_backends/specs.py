"""Env-LLM spec strings (``sim``, ``openai:MODEL``, ...): the registry that names backends, and :func:`make_backend`."""

from __future__ import annotations

import difflib
from typing import Any, Callable

from .base import LLMBackend

__all__ = ["BACKENDS", "available_backends", "check_spec", "make_backend", "register_backend"]

from promptr1.core.registry import Registry, UnknownNameError

#: Env-LLM specs by name. Entries are lazy ``"module:attribute"`` references, imported on first use so
#: that ``import promptr1`` stays light. Only this layer's backends are named here: ``sim`` is registered by
#: :mod:`promptr1.envs.synthetic` (it answers about that world), the test doubles ``scripted`` and ``echo`` by
#: :mod:`promptr1.testing` when it is imported (``--plugins promptr1.testing`` on the command line).
BACKENDS: Registry[Callable[..., LLMBackend]] = Registry(
    "env_llm",
    {
        "openai": "promptr1.llm_backends.openai_backend:OpenAIBackend",
        "hf": "promptr1.llm_backends.hf_backend:HFBackend",
        "smollm2": "promptr1.llm_backends.hf_backend:smollm2_backend",
    },
    display={"openai": "openai:MODEL", "hf": "hf:ID_OR_PATH"},
    extra="(or an LLMBackend instance; the test doubles echo and scripted come with --plugins promptr1.testing)",
)

#: Specs that need an argument after the colon.
_NEEDS_ARG = ("openai", "hf")


def register_backend(name: str, factory: str | Callable[..., LLMBackend], *, overwrite: bool = False) -> None:
    """Make ``name`` (or ``name:ARG``) usable as an ``env_llm`` spec.

    ``factory`` (a callable, or a lazy ``"module:attribute"`` string) is called as ``factory(**kwargs)``
    for ``name`` and ``factory(ARG, **kwargs)`` for ``name:ARG``.
    """
    BACKENDS.register(name, factory, overwrite=overwrite)


def available_backends() -> list[str]:
    return BACKENDS.names()


def check_spec(spec: str) -> tuple[str, str, str]:
    """Split an env-LLM spec into ``(name, ":", argument)`` and check it names a registered backend, without
    building it (no import, no connection): a command checks every spec this way before its first expensive
    step.

    >>> check_spec("openai:gpt-4o")
    ('openai', ':', 'gpt-4o')
    >>> check_spec("opneai:gpt-4o")
    Traceback (most recent call last):
    ...
    promptr1.core.registry.UnknownNameError: unknown env_llm 'opneai:gpt-4o'. Did you mean 'openai:gpt-4o'? ...
    """
    name, sep, arg = spec.partition(":")
    name = name.strip().lower()
    if name not in BACKENDS:
        error = BACKENDS.unknown(spec)
        close = difflib.get_close_matches(name, BACKENDS.names(), n=1, cutoff=0.5)
        text = str(error)
        if close and "Did you mean" not in text:  # the registry compares whole specs; the name was mistyped
            head = f"unknown {BACKENDS.kind} {spec!r}."
            text = text.replace(head, f"{head} Did you mean {close[0] + sep + arg!r}?", 1)
            error = UnknownNameError(text)
        raise error
    if name in _NEEDS_ARG and not arg:
        raise ValueError(f"env_llm {spec!r} needs a model: write '{name}:MODEL', e.g. 'openai:gpt-4o-mini'.")
    return name, sep, arg


def make_backend(spec: str | LLMBackend, **kwargs: Any) -> LLMBackend:
    """Build an environment LLM from a spec string, or pass an instance through.

    >>> make_backend("sim").name
    'sim'
    >>> make_backend("gpt4")
    Traceback (most recent call last):
    ...
    promptr1.core.registry.UnknownNameError: unknown env_llm 'gpt4'. Expected one of: ...hf:ID_OR_PATH, openai:MODEL, ...smollm2 (or an LLMBackend instance; the test doubles echo and scripted come with --plugins promptr1.testing).
    """
    if not isinstance(spec, str):
        if isinstance(spec, LLMBackend):
            if kwargs:
                raise TypeError("keyword arguments are only used with a spec string, not a backend instance.")
            return spec
        raise TypeError(
            f"env_llm must be a spec string such as 'sim' or 'openai:gpt-4o-mini', or an object with "
            f"name/complete/acomplete; got {type(spec).__name__}."
        )
    name, sep, arg = check_spec(spec)
    factory = BACKENDS.get(name)
    return factory(arg, **kwargs) if sep else factory(**kwargs)

