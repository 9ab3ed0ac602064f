"""Local model folders: short model names, where promptr1 keeps the models it converts or builds, and
how it writes them safely.

:data:`MODELS` maps a short name to a function returning the model's folder: ``smollm2`` (the offline
SmolLM2-135M-Instruct) and ``tiny`` (the random test model, a lazy reference into
:mod:`promptr1.testing`). The cache helpers are used by :mod:`promptr1.llm_backends.smollm2` (the GGUF converted once to an HF folder) and by the
tiny test model in :mod:`promptr1.testing.tiny_model`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Callable

from promptr1.core.registry import Registry

__all__ = ["MODELS", "atomic_build_dir", "default_cache_dir", "model_folder"]

#: Short model names -> a zero-argument function returning the model folder (lazy references). The random test
#: model ``tiny`` is registered by :mod:`promptr1.testing` when it is imported.
MODELS: Registry[Callable[[], pathlib.Path]] = Registry(
    "model name",
    {
        "smollm2": "promptr1.llm_backends.smollm2:smollm2_model_dir",
    },
)


def model_folder(name: str) -> str:
    """The folder of a registered short model name; any other name is returned unchanged.

    >>> model_folder("some-org/some-model")
    'some-org/some-model'
    """
    return str(MODELS.get(name)()) if name in MODELS else name

_MARKER = "promptr1_build.json"


# --------------------------------------------------------------------------- cache helpers


def default_cache_dir() -> pathlib.Path:
    """The folder holding promptr1's converted and generated models.

    ``$PROMPTR1_CACHE`` wins; otherwise ``$XDG_CACHE_HOME/promptr1``; otherwise
    ``~/.cache/promptr1``.

    >>> import os
    >>> old = os.environ.get("PROMPTR1_CACHE")
    >>> os.environ["PROMPTR1_CACHE"] = "/tmp/somewhere"
    >>> str(default_cache_dir())
    '/tmp/somewhere'
    >>> _ = os.environ.pop("PROMPTR1_CACHE") if old is None else os.environ.update(PROMPTR1_CACHE=old)
    """
    env = os.environ.get("PROMPTR1_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "promptr1"


def _read_marker(folder: pathlib.Path) -> dict | None:
    try:
        return json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def atomic_build_dir(
    target: pathlib.Path, build: Callable[[pathlib.Path], None], *, marker: dict
) -> pathlib.Path:
    """Return ``target``, building it first with ``build(tmp_folder)`` unless it is up to date.

    The folder counts as up to date when its marker file equals ``marker``. The build writes
    into a fresh temporary folder next to ``target`` which is then renamed into place, so a
    reader never sees a half-written folder and two processes racing to build it both end up
    with one complete copy (the loser's copy is discarded).
    """
    target = pathlib.Path(target)
    if _read_marker(target) == marker:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it ordinary folder permissions
    try:
        build(tmp)
        (tmp / _MARKER).write_text(json.dumps(marker, sort_keys=True))
        if target.exists() and _read_marker(target) != marker:
            # Stale or broken copy: move it aside (atomic), then delete it.
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            except OSError:
                pass  # someone else replaced it meanwhile
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process won the race; keep theirs if it is complete.
            if _read_marker(target) != marker:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
