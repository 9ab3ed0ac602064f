"""Writing files so that a reader never sees half of one.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "run_config.json"
>>> atomic_write_text(p, '{"a": 1}'); p.read_text()
'{"a": 1}'
"""

from __future__ import annotations

import os
import pathlib
import tempfile

__all__ = ["atomic_write_text"]


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically: into a temporary file beside it, flushed to disk, then renamed over
    ``path`` (``os.replace``). A process killed at any moment leaves the old file or the new one, never an empty or
    torn one."""
    target = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
