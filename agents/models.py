"""Agent models: one resolver from a name to a folder, one loader, one log-prob forward.

A model name is a registered short name (``smollm2``, the offline SmolLM2-135M-Instruct; ``tiny``, the
random test model), a training run folder (its latest checkpoint), a checkpoint folder, or a Hugging Face
id or folder. Training, SFT and evaluation all load through :func:`load_policy`.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Any

import torch

from promptr1.agents.checkpoint import find_latest_checkpoint, unloadable_weights
from promptr1.llm_backends.model_cache import MODELS, model_folder

__all__ = ["MODELS", "check_model_name", "load_policy", "resolve_dtype", "resolve_model_path", "sequence_logprobs"]

def resolve_model_path(name: str) -> str:
    """``smollm2`` -> the cached SmolLM2-135M-Instruct folder; ``tiny`` -> the tiny test model;
    a training output folder -> its latest checkpoint; anything else is passed through."""
    if name in MODELS:
        return model_folder(name)
    p = pathlib.Path(name)
    if p.is_dir() and not (p / "config.json").exists():
        ckpt = find_latest_checkpoint(p)
        if ckpt is not None:
            return str(ckpt)
    return name


#: The folder commands write their runs under by default: ``runs/NAME`` is a local path, never a hub id.
RUNS_ROOT = "runs"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model_name(name: str, *, what: str = "model") -> None:
    """Fail at once, in one line, for a model name that cannot load: a local-looking path that does not exist, or a
    folder without a model (``config.json``) or a tokenizer. Cheap (no weights read), so that a command can check
    every model it will need before its first expensive step. Names that look like Hugging Face ids pass through.

    A name is local-looking when it starts with ``.``, ``/`` or ``~``, has more than one ``/``, or its first part is
    a folder here or ``runs`` (where commands write by default): ``runs/x`` is never looked up on the hub. With
    ``HF_HUB_OFFLINE=1`` an id that is not in the local hub cache fails here too.
    """
    if name in MODELS:
        return
    p = pathlib.Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise FileNotFoundError(f"{what} {name!r} is a file; expected a model folder (with config.json), a "
                                    "training run folder, or a Hugging Face id.")
        folder = pathlib.Path(resolve_model_path(str(p)))
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{what} {name!r} holds no model (no config.json) and no complete checkpoint; "
                                    "give a model folder, a training run folder, or a Hugging Face id.")
        if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
            raise FileNotFoundError(f"{what} {name!r}: {folder} holds a model but no tokenizer (none of "
                                    f"{', '.join(_TOKENIZER_FILES)}); save it with tokenizer.save_pretrained(folder).")
        return
    parts = pathlib.PurePosixPath(name.replace("\\", "/")).parts
    local = (name.startswith((".", "/", "~")) or len(parts) > 2
             or (len(parts) == 2 and (parts[0] == RUNS_ROOT or pathlib.Path(parts[0]).is_dir())))
    if not local and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        try:
            from huggingface_hub import try_to_load_from_cache

            local = not isinstance(try_to_load_from_cache(name, "config.json"), str)
        except Exception:  # an id the hub library rejects: let from_pretrained say why
            local = False
    if not local and len(parts) == 1 and not _in_hub_cache(name):
        # a bare name (no ORG/) that is neither registered, nor a folder, nor cached: a typo far more often
        # than one of the hub's few legacy un-namespaced ids; say so now, not after a minute of hub retries
        import difflib

        close = difflib.get_close_matches(name, sorted(MODELS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FileNotFoundError(f"{what} {name!r} is not a registered name, a folder here, or a model in the "
                                f"local Hugging Face cache.{hint} Give a registered name "
                                f"({', '.join(sorted(MODELS))}), a model folder, a training run folder, or a "
                                "Hugging Face id (ORG/NAME).")
    if local:
        raise FileNotFoundError(f"{what} {name!r}: no such folder. Give a model folder, a training run folder "
                                "(its latest checkpoint is used), a registered name "
                                f"({', '.join(sorted(MODELS))}), or a Hugging Face id (ORG/NAME).")


def _in_hub_cache(name: str) -> bool:
    """Whether the local Hugging Face cache holds a model ``name`` (its ``config.json``); reads no network."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an id the hub library rejects
        return False


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(name: str | torch.dtype | None, *, cpu: bool = False) -> torch.dtype | None:
    """A dtype setting as a torch dtype: ``auto`` is bf16 on a GPU that supports it, else float32.

    >>> resolve_dtype("bf16"), resolve_dtype("auto", cpu=True), resolve_dtype(None)
    (torch.bfloat16, torch.float32, None)
    """
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower()
    if key == "auto":
        gpu = not cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu else torch.float32
    if key not in _DTYPES:
        raise ValueError(f"model_dtype must be auto, bf16, fp16 or fp32; got {name!r}.")
    return _DTYPES[key]


def load_policy(name: str, *, dtype: str | torch.dtype | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer (left padding off: we pad by hand), in ``dtype`` when given.

    Weights that do not load as data (a truncated or garbage ``model.safetensors``, a pickled ``.bin`` holding more
    than tensors) are refused with a one-line :class:`~promptr1.agents.checkpoint.CheckpointError` naming the file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:  # not on the hub, no network, no such folder: a one-line usage error, no traceback
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise FileNotFoundError(f"model {name!r} cannot be loaded: {first.strip()}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = resolve_dtype(dtype)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception:
        bad = unloadable_weights(path)  # a damaged or pickled weights file: one line naming it, not a traceback
        if bad is None:
            raise
        raise bad from None
    return model, tokenizer


def sequence_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, action_mask: torch.Tensor,
                      *, temperature: float = 1.0, with_entropy: bool = False, entropy_grad: bool = True,
                      autocast: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(token_t | tokens_<t)`` as ``(B, T)`` (0 where not computed), and optionally the entropy.

    Logits are only computed from the position before the batch's first action token on
    (``logits_to_keep``): the prompt's logits are never needed, which saves memory and time
    with large vocabularies. ``entropy_grad=False`` computes the entropy without autograd (for logging only): its
    softmax buffers, two to three times the logits' size, are then not kept for the backward pass.
    """
    from promptr1.agents.losses import entropy_from_logits, token_logprobs

    B, T = input_ids.shape
    act_cols = action_mask.bool().any(0).nonzero()
    start = max(int(act_cols[0].item()) - 1, 0) if act_cols.numel() else 0
    keep = torch.arange(start, T - 1, device=input_ids.device)  # positions whose logits predict t+1
    ctx = autocast() if autocast is not None else contextlib.nullcontext()
    with ctx:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=keep).logits  # (B, T-1-start, V)
    tgt = input_ids[:, start + 1:]  # (B, T-1-start)
    lp = token_logprobs(logits, tgt, temperature=temperature)
    logp = lp.new_zeros(B, T)
    logp = torch.cat([logp[:, : start + 1], lp], dim=1)  # (B, T)
    ent = None
    if with_entropy:
        with contextlib.nullcontext() if entropy_grad else torch.no_grad():
            e = entropy_from_logits(logits, temperature=temperature)
        ent = torch.cat([e.new_zeros(B, start + 1), e], dim=1)  # (B, T)
    return logp, ent
