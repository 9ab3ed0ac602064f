"""One registry type for every "pick it by name" in the project.

Algorithms, advantage estimators, policy losses, reward variants, answer metrics, env-LLM backends,
task sources, embedders and agent models are all :class:`Registry` instances. An entry is either the
object itself or a lazy ``"module:attribute"`` reference, imported on first use (so that registering
``smollm2`` or ``openai`` costs nothing until someone asks for it, and so that a registry in a low layer
can name an implementation in a higher one without importing it). An unknown name raises
:class:`UnknownNameError` with one wording everywhere:

>>> colors = Registry("color", {"red": 0xFF0000, "green": 0x00FF00})
>>> colors.get("gren")
Traceback (most recent call last):
...
promptr1.core.registry.UnknownNameError: unknown color 'gren'. Did you mean 'green'? Expected one of: green, red.
>>> colors.register("blue", 0x0000FF)
255
>>> @colors.register("black")
... def black():
...     return 0
>>> colors.names()
['black', 'blue', 'green', 'red']
>>> Registry("loader", {"dumps": "json:dumps"}).get("dumps")({"a": 1})
'{"a": 1}'

This module imports nothing from the project: every layer may use it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

__all__ = ["Registry", "UnknownNameError", "did_you_mean", "resolve_reference"]

T = TypeVar("T")
_MISSING: Any = object()


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered. Both a ``KeyError`` (a failed lookup) and a ``ValueError`` (a bad
    option value, which is what a command-line parser catches); ``str()`` is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def did_you_mean(kind: str, name: object, choices: list[str], *, extra: str = "") -> str:
    """The one wording of an unknown-name error.

    >>> did_you_mean("reward variant", "faithfull", ["answer_gated", "faithful"])
    "unknown reward variant 'faithfull'. Did you mean 'faithful'? Expected one of: answer_gated, faithful."
    >>> did_you_mean("widget", "a", [])
    "unknown widget 'a'. Expected one of: (none)."
    """
    hint = difflib.get_close_matches(str(name).strip(), choices, n=1, cutoff=0.5)
    msg = f"unknown {kind} {name!r}."
    if hint:
        msg += f" Did you mean {hint[0]!r}?"
    msg += f" Expected one of: {', '.join(choices) or '(none)'}"
    return msg + (f" {extra}" if extra else "") + "."


def resolve_reference(ref: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"a lazy registry entry is written 'package.module:attribute'; got {ref!r}.")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Mapping[str, T], Generic[T]):
    """Objects of one kind by name (``kind`` is only used in messages).

    Args:
        kind: what the entries are, e.g. ``"advantage estimator"``.
        entries: initial entries; a ``str`` value is a lazy ``"module:attribute"`` reference.
        loaders: modules imported on the first lookup, for built-ins that register themselves with a
            decorator in the module that defines them.
        display: how a name is shown in the "expected one of" list (e.g. ``openai`` as ``openai:MODEL``).
        extra: a sentence appended to the unknown-name message (e.g. "(or an LLMBackend instance)").
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T | str] | None = None,
        *,
        loaders: tuple[str, ...] = (),
        display: Mapping[str, str] | None = None,
        extra: str = "",
    ) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._builtin: set[str] = set()
        self._loaders = loaders
        self._loaded = not loaders
        self._display = dict(display or {})
        self._extra = extra
        for name, obj in (entries or {}).items():
            self._entries[self._check_name(name)] = obj
            self._builtin.add(name)

    # ------------------------------------------------------------------ registration
    def _check_name(self, name: Any) -> str:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"a {self.kind} name must be a non-empty string; got {name!r}.")
        return name.strip()

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: the loader modules call register() on this registry
            for module in self._loaders:
                importlib.import_module(module)
            self._builtin.update(self._entries)

    @overload
    def register(self, name: str, obj: None = None, *, overwrite: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T | str, *, overwrite: bool = False) -> T | str: ...

    def register(self, name: str, obj: Any = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` (or a lazy ``"module:attr"`` string) under ``name``; without ``obj``, a decorator.

        A name registered twice is an error unless ``overwrite=True``, so two plug-ins cannot silently
        shadow each other. Returns ``obj`` unchanged.
        """
        name = self._check_name(name)

        def add(o: Any) -> Any:
            self._load_builtins()
            if name in self._entries and not overwrite and self._entries[name] is not o:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it "
                    "or choose another name."
                )
            self._entries[name] = o
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> T:
        """Remove and return an entry added at run time (built-in entries stay)."""
        self._load_builtins()
        if name in self._builtin:
            raise ValueError(f"{self.kind} {name!r} is built in and cannot be removed.")
        obj = self.get(name)
        del self._entries[name]
        return obj

    # ------------------------------------------------------------------ lookup
    def unknown(self, name: object) -> UnknownNameError:
        """The error for an unknown ``name`` (also used by callers that parse a spec first)."""
        shown = [self._display.get(n, n) for n in self.names()]
        return UnknownNameError(did_you_mean(self.kind, name, shown, extra=self._extra))

    def get(self, name: str, default: Any = _MISSING) -> T:  # type: ignore[override]
        """The entry for ``name`` (a lazy reference is imported now). An unknown name raises
        :class:`UnknownNameError`, unless a ``default`` is given (then it is returned, as ``Mapping.get``)."""
        self._load_builtins()
        try:
            obj = self._entries[name]
        except (KeyError, TypeError):
            if default is not _MISSING:
                return default
            raise self.unknown(name) from None
        if isinstance(obj, str):
            obj = resolve_reference(obj)
        return obj  # type: ignore[return-value]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
