"""Test doubles: backends whose replies are fixed in advance (deterministic, no network)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from promptr1.llm_backends.base import BaseBackend, Completion, EnvLLMError, Message, validate_messages

__all__ = ["EchoBackend", "ScriptedBackend"]


class ScriptedBackend(BaseBackend):
    """Replies from a list (cycled), or from a function of the messages.

    ``replies`` items may be strings or exceptions; an exception is raised for that call,
    which is how tests inject environment failures.

    >>> b = ScriptedBackend(["four", "five"])
    >>> b.complete([{"role": "user", "content": "2+2?"}]).text
    'four'
    >>> b.calls[-1][-1]["content"]
    '2+2?'
    """

    name = "scripted"
    deterministic = True
    _needs_lock = True

    def __init__(
        self,
        replies: Sequence[str | BaseException] | Callable[[list[dict[str, str]]], str] = ("ok",),
        *,
        cycle: bool = True,
    ) -> None:
        super().__init__()
        if not callable(replies) and len(replies) == 0:
            raise ValueError("ScriptedBackend needs at least one reply, e.g. ScriptedBackend(['ok']).")
        self._replies = replies
        self._cycle = cycle
        self._i = 0
        self._lock = threading.Lock()
        self.calls: list[list[dict[str, str]]] = []

    def complete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        msgs = validate_messages(messages)
        with self._lock:
            self.calls.append(msgs)
            if callable(self._replies):
                reply: str | BaseException = self._replies(msgs)
            else:
                if self._i >= len(self._replies) and not self._cycle:
                    raise EnvLLMError("scripted backend ran out of replies", kind="error")
                reply = self._replies[self._i % len(self._replies)]
                self._i += 1
        if isinstance(reply, BaseException):
            raise reply
        return Completion(text=str(reply), model="scripted", prompt_tokens=sum(len(m["content"].split()) for m in msgs),
                          completion_tokens=len(str(reply).split()))


class EchoBackend(BaseBackend):
    """Replies with the last user message, prefixed by ``prefix``.

    >>> EchoBackend().complete([{"role": "user", "content": "hello"}]).text
    'You said: hello'
    """

    name = "echo"
    deterministic = True

    def __init__(self, prefix: str = "You said: ") -> None:
        super().__init__()
        self.prefix = prefix

    def complete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        msgs = validate_messages(messages)
        last = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
        text = self.prefix + last
        return Completion(text=text, model="echo", prompt_tokens=sum(len(m["content"].split()) for m in msgs),
                          completion_tokens=len(text.split()))
