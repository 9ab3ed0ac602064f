"""Seeding in one place: the global RNGs, and stable seeds derived from a run's seed."""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["derived_seed", "seed_everything"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """The one place where the global RNGs are seeded (python, numpy, torch, CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True


def derived_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (step, rank, purpose...).

    >>> derived_seed(0, "rollout", 3) == derived_seed(0, "rollout", 3)
    True
    """
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)
