"""Stopping a long run cleanly on Ctrl-C or SIGTERM: :class:`StopRequest`.

Inside ``with StopRequest() as stop:`` the first SIGINT or SIGTERM only sets ``stop.signum``: the training
loop (or the evaluation) finishes the unit of work in hand (a training step, a batch of episodes), writes what
it has, and ends on its own. A second SIGINT stops at once: it raises :class:`KeyboardInterrupt` where the
program is, as Python's default handler does. Outside the block the earlier handlers are back. Blocks nest: a
stop requested inside an inner block (a validation run during training) stops the outer one too.

Handlers can only be installed from the main thread; elsewhere (a notebook's worker thread, a trainer driven
from another thread) the block does nothing and ``stop.signum`` stays ``None``.

>>> with StopRequest() as stop:
...     stop.request(signal.SIGTERM)
...     stop.signum == signal.SIGTERM, stop.exit_code
(True, 143)
"""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Sequence
from typing import Any, Self

__all__ = ["StopRequest", "resume_command", "signal_exit_code"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_BOOL_WORDS = ("true", "false", "yes", "no", "1", "0", "on", "off")


def signal_exit_code(signum: int) -> int:
    """The shell's exit code for a process ended by ``signum``: 128 + its number (130 for SIGINT, 143 for
    SIGTERM).

    >>> signal_exit_code(signal.SIGINT), signal_exit_code(signal.SIGTERM)
    (130, 143)
    """
    return 128 + int(signum)


class StopRequest:
    """A context manager that turns the first SIGINT/SIGTERM into a request to stop (see the module's doc)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int | None:
        """130 after SIGINT, 143 after SIGTERM, ``None`` when no stop was requested."""
        return None if self.signum is None else signal_exit_code(self.signum)

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    def request(self, signum: int, frame: Any = None) -> None:
        """The signal handler: the first call records ``signum``; a later SIGINT raises
        :class:`KeyboardInterrupt`."""
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = int(signum)
        outer = getattr(self._previous.get(signum), "__self__", None)
        if isinstance(outer, StopRequest) and outer.signum is None:  # nested (an evaluation inside training):
            outer.signum = int(signum)  # the enclosing run stops too

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self.request)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def resume_command(argv: Sequence[str] | None, prog: str = "promptr1 train") -> str:
    """The command that continues an interrupted run: ``argv`` without its ``--resume`` and ``--overwrite``
    (which would delete the checkpoint to resume), then ``--resume auto``. Without ``argv``: a generic hint.

    >>> resume_command(["--steps", "6", "--overwrite", "true", "--resume=x", "--output-dir", "runs/a b"])
    "promptr1 train --steps 6 --output-dir 'runs/a b' --resume auto"
    >>> resume_command(None)
    'promptr1 train ... --resume auto'
    """
    if argv is None:
        return f"{prog} ... --resume auto"
    kept: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        name = a.split("=", 1)[0]
        if name == "--resume":
            i += 1 if "=" in a else 2
            continue
        if name == "--overwrite":  # a flag, or followed by its value
            i += 1
            if "=" not in a and i < len(args) and args[i].lower() in _BOOL_WORDS:
                i += 1
            continue
        kept.append(a)
        i += 1
    return " ".join([prog, *map(shlex.quote, kept), "--resume", "auto"])
