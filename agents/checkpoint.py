"""Atomic, resumable checkpoints.

Layout of ``OUTPUT_DIR``::

    checkpoint-000010/        a complete checkpoint (never partially written)
        config.json, model.safetensors, tokenizer files ...   the model in HF format (from_pretrained)
        trainer_state.json                                      step, data cursor, config
        accelerate_state/                                       the trainer's: optimizer, LR scheduler and every
                                                                process's RNG through accelerate's state API
                                                                (sharded per rank under FSDP / DeepSpeed)
        optimizer.pt, scheduler.pt, rng_state_rank0.pt ...      single-process writers (write_checkpoint, SFT)
    latest                    a text file naming the newest complete checkpoint

A checkpoint is written into a hidden temporary folder which is renamed into place only when
every file is on disk; ``latest`` is then replaced atomically (``os.replace``). A process killed
at any moment leaves either the previous checkpoint or the new one as ``latest``, never a torn
one; stale temporary folders are removed on the next save.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "ACCELERATE_STATE",
    "CHECKPOINT_PREFIX",
    "capture_rng_state",
    "find_latest_checkpoint",
    "load_trainer_state",
    "restore_rng_state",
    "write_checkpoint",
]

CHECKPOINT_PREFIX = "checkpoint-"
#: Sub-folder of a trainer checkpoint holding accelerate's saved state.
ACCELERATE_STATE = "accelerate_state"
_TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX


def capture_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


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
    final = out / checkpoint_name(step)
    if final.exists():  # re-saving a step (e.g. the end of a resumed run): swap the old one out
        trash = out / f".old-{checkpoint_name(step)}"
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(out)
    pointer_tmp = out / ".latest.tmp"
    pointer_tmp.write_text(final.name + "\n")
    with open(pointer_tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer_tmp, out / "latest")
    _fsync_dir(out)
    # Stale temporary folders of killed runs
    for p in out.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep > 0:
        done = sorted(p for p in out.glob(CHECKPOINT_PREFIX + "*") if p.is_dir())
        for old in done[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


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
    done = sorted((c for c in p.glob(CHECKPOINT_PREFIX + "*") if _is_complete(c)), reverse=True)
    return done[0] if done else None


def load_trainer_state(folder: str | os.PathLike) -> dict[str, Any]:
    return json.loads((pathlib.Path(folder) / "trainer_state.json").read_text())
