"""Atomic, resumable checkpoints.

Layout of ``OUTPUT_DIR``::

    checkpoint-000010/        a complete checkpoint (never partially written)
        config.json, model.safetensors, tokenizer files ...   the model in HF format (from_pretrained)
        trainer_state.json                                      step, data cursor, config
        accelerate_state/                                       the trainer's: optimizer, LR scheduler and every
                                                                process's RNG through accelerate's state API
                                                                (sharded per rank under FSDP / DeepSpeed); by
                                                                default only the newest checkpoint keeps the
                                                                optimizer and scheduler (``save_optimizer``)
        optimizer.pt, scheduler.pt, rng_state_rank0.pt ...      single-process writers (write_checkpoint, SFT)
    checkpoint-000010.1/      the same step saved again (e.g. at the end of a resumed run): a new name, never a swap
    latest                    a text file naming the newest complete checkpoint

A checkpoint is written into a hidden temporary folder which is renamed into place only when
every file is on disk; ``latest`` is then replaced atomically (``os.replace``). A step saved again
gets a fresh name (``.1``, ``.2`` ...), so no complete checkpoint is ever moved or deleted before
``latest`` names its successor: a process killed at any moment leaves either the previous checkpoint
or the new one as ``latest``, never a torn or missing one; stale temporary folders are removed on the
next save.

Every ``.pt`` file is written and read as data (tensors, numbers, strings and containers):
:func:`load_checkpoint_file` loads with ``torch.load(weights_only=True)`` and refuses anything else, since a
checkpoint may come from someone else. A fresh run refuses an output folder that holds an earlier run's
checkpoints unless told to resume or to overwrite (:func:`claim_output_dir`).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "ACCELERATE_STATE",
    "CHECKPOINT_PREFIX",
    "CheckpointError",
    "accelerate_rng_problem",
    "capture_rng_state",
    "claim_output_dir",
    "drop_optimizer_state",
    "earlier_outputs",
    "find_latest_checkpoint",
    "find_resume_checkpoint",
    "has_optimizer_state",
    "load_checkpoint_file",
    "load_trainer_state",
    "older_checkpoints",
    "restore_rng_state",
    "resume_report",
    "unloadable_weights",
    "write_checkpoint",
]

CHECKPOINT_PREFIX = "checkpoint-"
#: Sub-folder of a trainer checkpoint holding accelerate's saved state.
ACCELERATE_STATE = "accelerate_state"
_TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded safely (it would need unpickling arbitrary objects) or at all (its
    weights are damaged)."""

    @classmethod
    def unsafe(cls, path: str | os.PathLike) -> CheckpointError:
        return cls(
            f"refusing to load {os.fspath(path)!r}: it holds Python objects other than tensors and plain containers, "
            "and loading it would run code from the file. prompt-r1 writes checkpoints that load as data only; "
            "resume from a checkpoint written by prompt-r1 (or delete the file to resume without it)."
        )

    @classmethod
    def not_loadable(cls, path: str | os.PathLike, why: str) -> CheckpointError:
        return cls(
            f"{os.fspath(path)!r} is not a loadable checkpoint: {why}. Give a model folder whose weights are "
            "safetensors, as prompt-r1 and save_pretrained write them (or an earlier checkpoint of the run)."
        )


def capture_rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, ints and floats only, so that it loads with ``torch.load(weights_only=True)``.

    >>> s = capture_rng_state(); a = random.random(); restore_rng_state(s); a == random.random()
    True
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """Load a ``.pt`` file of a checkpoint as data, never as code (``torch.load(weights_only=True)``).

    Checkpoints are files a user may receive from others: a file that holds anything but tensors and plain
    containers (a pickle that would import or call something) is refused with :class:`CheckpointError`.
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError.unsafe(path) from None


#: The weights files of a model folder that ``from_pretrained`` reads (single or sharded).
WEIGHTS_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def unloadable_weights(folder: str | os.PathLike) -> CheckpointError | None:
    """Why a model folder's weights cannot be loaded as data: a :class:`CheckpointError` naming the first weights
    file that is damaged (a safetensors header that does not describe the file: truncated, garbage) or is a pickle
    holding more than tensors; ``None`` when every weights file reads (or the folder has none).

    Cheap for safetensors (the header only); a ``.bin`` is loaded in full, so this is for explaining a load that
    failed, not for every load.
    """
    import pickle

    from safetensors import SafetensorError, safe_open

    root = pathlib.Path(folder)
    if not root.is_dir():
        return None
    for path in sorted({p for pattern in WEIGHTS_PATTERNS for p in root.glob(pattern) if p.is_file()}):
        if path.suffix == ".safetensors":
            try:
                with safe_open(path, framework="pt") as f:
                    f.keys()
            except (SafetensorError, OSError) as e:
                reason = str(e).split(": ", 1)[-1]
                return CheckpointError.not_loadable(path, f"it is not a complete safetensors file ({reason}); it may be "
                                                          "truncated or damaged")
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=False)
        except pickle.UnpicklingError:  # torch's text here advises unsafe loading: it is not passed on
            return CheckpointError.not_loadable(path, "its weights are a pickle holding Python objects other than "
                                                      "tensors, and loading it would run code from the file")
        except Exception as e:  # noqa: BLE001 -- any reason a weights file does not read is the answer here
            return CheckpointError.not_loadable(path, f"it cannot be read as PyTorch weights ({type(e).__name__})")
    return None


def accelerate_rng_problem(state_dir: str | os.PathLike, process_index: int = 0) -> str | None:
    """Why accelerate's ``load_state`` would not restore this process's RNG state from ``state_dir``, or ``None``.

    accelerate reads ``random_states_N.pkl`` as data (``weights_only=True``) and, when that fails or the file is
    missing, skips the RNG state without a word: the resumed run then draws other samples than an uninterrupted
    one would. This reads the file as accelerate does, so the trainer can say so.
    """
    import pickle

    from accelerate.utils import load

    path = pathlib.Path(state_dir) / f"random_states_{int(process_index)}.pkl"
    if not path.is_file():
        return f"{os.fspath(path)!r} is missing"
    try:
        states = load(path, map_location="cpu")
    except pickle.UnpicklingError:
        return f"{os.fspath(path)!r} holds Python objects other than tensors and plain data, which are not loaded"
    except Exception as e:  # noqa: BLE001 -- accelerate skips the file on any error; so we say why
        return f"{os.fspath(path)!r} cannot be read ({type(e).__name__})"
    missing = [k for k in ("random_state", "numpy_random_seed", "torch_manual_seed")
               if not isinstance(states, Mapping) or k not in states]
    if missing:
        return f"{os.fspath(path)!r} lacks {', '.join(missing)}"
    return None


def _fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: pathlib.Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def checkpoint_name(step: int, version: int = 0) -> str:
    """``checkpoint-000010``; a step saved again gets ``checkpoint-000010.1``, ``.2`` ..."""
    return f"{CHECKPOINT_PREFIX}{step:06d}" + (f".{version}" if version else "")


_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d+)(?:\.(\d+))?$")


def _order(folder: pathlib.Path) -> tuple[int, int]:
    """``(step, version)`` of a checkpoint folder's name; ``(-1, -1)`` for a name that is not one."""
    m = _NAME.match(folder.name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (-1, -1)


def _checkpoints(out: pathlib.Path) -> list[pathlib.Path]:
    """The checkpoint folders in ``out``, oldest first (by step, then by version)."""
    return sorted((p for p in out.glob(CHECKPOINT_PREFIX + "*") if p.is_dir() and _order(p)[0] >= 0), key=_order)


def temp_dir_for(output_dir: str | os.PathLike, step: int) -> pathlib.Path:
    """The hidden folder a checkpoint is written into before its rename (same for every process)."""
    return pathlib.Path(output_dir) / f"{_TMP_PREFIX}{step:06d}"


def write_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    *,
    model: Any,
    tokenizer: Any | None,
    optimizer: Any | None,
    scheduler: Any | None,
    trainer_state: Mapping[str, Any],
    extra_files: Mapping[str, Any] | None = None,
    keep: int = 0,
) -> pathlib.Path:
    """Write a complete checkpoint atomically (single process); return its folder.

    ``model`` is saved with ``save_pretrained`` (HF format). ``extra_files`` maps file names to
    objects saved with ``torch.save`` (e.g. per-rank RNG states). ``keep > 0`` prunes all but the
    newest ``keep`` checkpoints afterwards.
    """
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_for(out, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_checkpoint_files(tmp, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
                           trainer_state={**trainer_state, "step": step}, extra_files=extra_files)
    return publish_checkpoint(out, step, keep=keep)


def write_checkpoint_files(folder: pathlib.Path, *, model: Any, tokenizer: Any | None, optimizer: Any | None,
                           scheduler: Any | None, trainer_state: Mapping[str, Any],
                           extra_files: Mapping[str, Any] | None = None) -> None:
    """Write every file of a checkpoint into ``folder`` (no atomicity here)."""
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    for name, obj in (extra_files or {}).items():
        torch.save(obj, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps(dict(trainer_state), indent=2, sort_keys=True, default=str))


def publish_checkpoint(output_dir: str | os.PathLike, step: int, *, keep: int = 0) -> pathlib.Path:
    """Rename the finished temporary folder into place and point ``latest`` at it (atomic)."""
    out = pathlib.Path(output_dir)
    tmp = temp_dir_for(out, step)
    if not (tmp / "trainer_state.json").exists():
        raise FileNotFoundError(f"checkpoint for step {step} is incomplete: {tmp} has no trainer_state.json.")
    _fsync_tree(tmp)
    version = 0
    while (out / checkpoint_name(step, version)).exists():
        version += 1
    final = out / checkpoint_name(step, version)
    os.rename(tmp, final)
    _fsync_dir(out)
    pointer_tmp = out / ".latest.tmp"
    pointer_tmp.write_text(final.name + "\n")
    with open(pointer_tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer_tmp, out / "latest")
    _fsync_dir(out)
    # Only now that `latest` names the new checkpoint: earlier saves of the same step, stale temporary folders
    for old in _checkpoints(out):
        if _order(old)[0] == step and old != final:
            shutil.rmtree(old, ignore_errors=True)
    for p in out.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep > 0:
        done = _checkpoints(out)
        for old in done[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


#: Files of accelerate's saved state that hold the optimizer and LR-scheduler state (``optimizer.bin``,
#: ``scheduler.bin``, ``optimizer_1.bin`` ...); the RNG states beside them stay.
_OPTIMIZER_FILES = re.compile(r"(optimizer|scheduler)(_\d+)?\.(bin|safetensors)$")


def has_optimizer_state(folder: str | os.PathLike) -> bool:
    """Whether a trainer checkpoint holds the optimizer state an exact resume needs."""
    state = pathlib.Path(folder) / ACCELERATE_STATE
    return state.is_dir() and any(_OPTIMIZER_FILES.match(p.name) for p in state.iterdir())


def drop_optimizer_state(folder: str | os.PathLike) -> int:
    """Delete the optimizer and scheduler files of a trainer checkpoint (its weights, RNG states and
    trainer_state.json stay); return the bytes freed. Only for the unsharded layout (one file per optimizer)."""
    state = pathlib.Path(folder) / ACCELERATE_STATE
    freed = 0
    if state.is_dir():
        for p in state.iterdir():
            if p.is_file() and _OPTIMIZER_FILES.match(p.name):
                freed += p.stat().st_size
                p.unlink()
    return freed


def older_checkpoints(output_dir: str | os.PathLike, than: str | os.PathLike) -> list[pathlib.Path]:
    """The checkpoint folders in ``output_dir`` other than ``than``, oldest first."""
    keep = pathlib.Path(than).name
    return [p for p in _checkpoints(pathlib.Path(output_dir)) if p.name != keep]


def _is_complete(folder: pathlib.Path) -> bool:
    return (folder / "trainer_state.json").is_file() and (folder / "config.json").is_file()


def find_latest_checkpoint(path: str | os.PathLike) -> pathlib.Path | None:
    """The newest complete checkpoint in an output folder (via ``latest``), or ``path`` itself if it is one."""
    p = pathlib.Path(path)
    if _is_complete(p):
        return p
    pointer = p / "latest"
    if pointer.is_file():
        cand = p / pointer.read_text().strip()
        if _is_complete(cand):
            return cand
    done = [c for c in _checkpoints(p) if _is_complete(c)]
    return done[-1] if done else None


def load_trainer_state(folder: str | os.PathLike) -> dict[str, Any]:
    return json.loads((pathlib.Path(folder) / "trainer_state.json").read_text())


def find_resume_checkpoint(output_dir: str | os.PathLike, resume: str) -> pathlib.Path | None:
    """The checkpoint a run with ``--resume RESUME`` continues from: ``None`` for a fresh run (no ``resume``,
    or ``auto`` with nothing there yet); a :class:`FileNotFoundError` for a ``resume`` folder without one."""
    if not resume:
        return None
    found = find_latest_checkpoint(output_dir if resume == "auto" else resume)
    if found is None and resume != "auto":
        raise FileNotFoundError(
            f"--resume {resume!r}: no complete checkpoint there. Expected a checkpoint folder (with "
            "trainer_state.json) or an output_dir holding checkpoint-* folders; use --resume auto to "
            "start fresh when none exists."
        )
    return found


def resume_report(output_dir: str | os.PathLike, resume: str, steps: int) -> tuple[str, bool]:
    """What a run with ``--resume RESUME`` and ``--steps STEPS`` will do, in one line, and whether it is
    finished already (its checkpoint's step is ``STEPS`` or more: nothing to train). Reads no weights."""
    found = find_resume_checkpoint(output_dir, resume)
    if found is None:
        where = os.fspath(output_dir)
        return f"--resume {resume}: no checkpoint in {where} yet; starting a fresh run.", False
    step = int(load_trainer_state(found).get("step", 0))
    if step >= steps:
        return (f"the run in {found} is finished (step {step} of {steps}); nothing to resume. Raise --steps "
                "to train it further.", True)
    return f"resuming from {found} (step {step} of {steps}).", False


#: What a training run writes into its ``output_dir`` besides its checkpoints (``--overwrite`` removes these and
#: nothing else there).
TRAINER_OUTPUTS = ("latest", ".latest.tmp", "tensorboard")


def earlier_outputs(output_dir: str | os.PathLike, names: tuple[str, ...] = ()) -> list[pathlib.Path]:
    """What an earlier run left in ``output_dir``: checkpoint folders (complete or not), and the entries named in
    :data:`TRAINER_OUTPUTS` and ``names``."""
    out = pathlib.Path(output_dir)
    if not out.is_dir():
        return []
    wanted = set(TRAINER_OUTPUTS) | set(names)
    return sorted(p for p in out.iterdir()
                  if p.name in wanted or _order(p)[0] >= 0 or p.name.startswith((_TMP_PREFIX, ".old-" + CHECKPOINT_PREFIX)))


def claim_output_dir(output_dir: str | os.PathLike, *, resume: str = "", overwrite: bool = False,
                     names: tuple[str, ...] = (), command: str = "promptr1 train") -> list[pathlib.Path]:
    """Make sure a fresh run does not write over an earlier run's results; return what ``overwrite`` removed.

    With ``resume`` set the earlier checkpoints are the point: nothing to do. Otherwise an ``output_dir`` that holds
    an earlier run's checkpoints (or the entries in ``names``) is refused with a :class:`FileExistsError` that says
    how to go on, unless ``overwrite`` is True: then those entries, and only those, are deleted first.
    """
    if resume:
        return []
    found = earlier_outputs(output_dir, names)
    if not found:
        return []
    if not overwrite:
        if all(p.name in ("tensorboard", ".latest.tmp") for p in found):
            return []  # logs of a run that stopped before its first checkpoint: new events are added beside them
        shown = ", ".join(p.name for p in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise FileExistsError(
            f"{command}: output_dir {os.fspath(output_dir)!r} holds an earlier run ({shown}), and a fresh run would "
            "overwrite or prune its checkpoints. Pass --resume auto to continue that run, --output-dir DIR to start "
            "a new one elsewhere, or --overwrite to delete the earlier run's results and start afresh."
        )
    for p in found:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return found
