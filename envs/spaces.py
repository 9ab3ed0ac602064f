"""A text space that admits any Unicode string up to a length.

``gymnasium.spaces.Text`` checks every character against a fixed charset (alphanumeric by
default), so an LLM's output with punctuation, tags, newlines or non-Latin script would be
rejected by ``contains``. :class:`UnicodeText` keeps ``Text``'s interface (so wrappers and the
env checker treat it as a text space) but accepts any ``str`` whose length is within
``[min_length, max_length]``. Sampling still draws from a finite charset, which by default mixes
ASCII, the protocol's tag characters, whitespace and some non-Latin letters.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium.spaces import Text

__all__ = ["UnicodeText", "DEFAULT_SAMPLE_CHARSET"]

DEFAULT_SAMPLE_CHARSET = string.ascii_letters + string.digits + string.punctuation + " \n\t" + "éüßñçøåЖжλπ東京你好🙂"


class UnicodeText(Text):
    """Any Unicode text of length ``min_length..max_length`` (in code points).

    >>> space = UnicodeText(max_length=21)
    >>> space.contains("<think>ok</think> 東京!")
    True
    >>> space.contains("x" * 22), space.contains(b"bytes")
    (False, False)
    """

    def __init__(
        self,
        max_length: int,
        *,
        min_length: int = 0,
        sample_charset: str = DEFAULT_SAMPLE_CHARSET,
        sample_max_length: int | None = 64,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        if max_length < 1 or min_length < 0 or min_length > max_length:
            raise ValueError(
                f"UnicodeText expects 0 <= min_length <= max_length and max_length >= 1, "
                f"got min_length={min_length}, max_length={max_length}."
            )
        super().__init__(max_length=max_length, min_length=min_length, charset=sample_charset, seed=seed)
        # Samples are kept short by default: a 16k-character random string is no better a test input.
        self.sample_max_length = max_length if sample_max_length is None else max(min_length, min(sample_max_length, max_length))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        length = int(self.np_random.integers(self.min_length, self.sample_max_length + 1))
        chars = self.character_list
        idx = self.np_random.integers(0, len(chars), size=length)
        return "".join(chars[i] for i in idx)

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, UnicodeText)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
        )
