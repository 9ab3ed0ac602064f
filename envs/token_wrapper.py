"""Token-level view of :class:`PromptCollabEnv`: one action is one token (the RL4LMs formulation).

:class:`TokenWrapper` turns the text environment into one that any discrete-action RL library
(stable-baselines3, CleanRL, ...) accepts:

* **action**: ``Discrete(V)``, the next token of the agent's turn. ``V`` is the tokenizer's
  vocabulary, or a restricted list of tokens (``vocab=[...]``) for research with small
  vocabularies; the end-of-turn token (the tokenizer's ``eos``) is always part of it.
* **observation**: the last ``window`` symbols of the dialogue's token stream (the agent's first
  prompt, every token the agent wrote, every environment reply), left-padded. A symbol is the
  action index of an in-vocabulary token, ``V`` for any other token, ``V + 1`` for padding.
  ``obs_type="multidiscrete"`` (default) gives ``MultiDiscrete([V + 2] * window)``;
  ``obs_type="box"`` gives the same numbers as a float32 ``Box``.
* **turns**: a turn ends on the end-of-turn token, when its decoded text ends with a closing tag
  (``</interaction_prompt>`` or ``</answer>``), or after ``max_turn_tokens`` tokens; the decoded
  text then goes to the inner environment's ``step``. The reward is the inner step's reward
  (0.0 for the tokens inside a turn), and the episode ends when the inner one does.

This is for research with small vocabularies; with the full vocabulary of a real LLM a flat
``Discrete(V)`` policy head is the wrong tool (use the GRPO trainer in :mod:`promptr1.agents`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from promptr1.core.tags import STOP_STRINGS

__all__ = ["DEFAULT_STOP_STRINGS", "TokenWrapper", "load_tokenizer", "vocab_from_texts"]

#: Closing tags that end an agent turn (docs/architecture.md, the turn protocol).
DEFAULT_STOP_STRINGS: tuple[str, ...] = STOP_STRINGS


def load_tokenizer(tokenizer: Any) -> Any:
    """A Hugging Face tokenizer: passed through, or loaded from a folder, an HF id or a short model name
    (``smollm2``; ``tiny`` is the random test model's small vocabulary)."""
    if tokenizer is None:
        raise TypeError(
            "load_tokenizer needs a tokenizer: a Hugging Face tokenizer, a folder, or a model name such as "
            "'smollm2' (or 'tiny', the test model's small vocabulary)."
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        from promptr1.llm_backends.model_cache import model_folder

        return AutoTokenizer.from_pretrained(model_folder(os.fspath(tokenizer)))
    if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
        raise TypeError(
            f"tokenizer must be a Hugging Face tokenizer, a folder path or a model name; "
            f"got {type(tokenizer).__name__}."
        )
    return tokenizer


def vocab_from_texts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """The sorted distinct token ids of ``texts``: a small vocabulary in which those texts can be written.

    >>> class Chars:  # a toy tokenizer: one token per character
    ...     def encode(self, text, add_special_tokens=False): return [ord(c) for c in text]
    >>> vocab_from_texts(Chars(), ["aba", "c"])
    [97, 98, 99]
    """
    ids: set[int] = set()
    for text in texts:
        ids.update(int(t) for t in tokenizer.encode(text, add_special_tokens=False))
    return sorted(ids)


def _resolve_vocab(tokenizer: Any, vocab: Sequence[int | str] | None, eos_id: int) -> list[int]:
    """Token ids the agent may emit, in action order; ``eos_id`` is appended if missing."""
    if vocab is None:
        ids = list(range(len(tokenizer)))
    else:
        ids = []
        for item in vocab:
            if isinstance(item, (int, np.integer)):
                tid = int(item)
            elif isinstance(item, str):
                tid = tokenizer.convert_tokens_to_ids(item)
                unk = getattr(tokenizer, "unk_token_id", None)
                if tid is None or (unk is not None and tid == unk and item != tokenizer.unk_token):
                    enc = tokenizer.encode(item, add_special_tokens=False)
                    if len(enc) != 1:
                        raise ValueError(
                            f"vocab entry {item!r} is {len(enc)} tokens for this tokenizer, expected exactly one; "
                            "give token strings as the tokenizer spells them (tokenizer.convert_ids_to_tokens) or ids."
                        )
                    tid = enc[0]
            else:
                raise TypeError(f"vocab entries must be token ids (int) or token strings; got {type(item).__name__}.")
            if not 0 <= tid < len(tokenizer):
                raise ValueError(f"vocab entry {item!r} is id {tid}, outside the tokenizer's 0..{len(tokenizer) - 1}.")
            ids.append(tid)
        if len(set(ids)) != len(ids):
            raise ValueError("vocab lists a token twice; every action must be a different token.")
    if eos_id not in ids:
        ids.append(eos_id)
    return ids


class TokenWrapper(gym.Env):
    """One token per action over a text :class:`~promptr1.envs.collab_env.PromptCollabEnv`.

    Args:
        env: the text environment (any env with ``str`` observations and actions).
        tokenizer: a Hugging Face tokenizer, a folder path, or ``None`` for the tiny test model's
            (:func:`promptr1.testing.tiny_model.tiny_model_path`).
        window: how many trailing token symbols the observation holds.
        max_turn_tokens: a turn is sent after this many tokens even without a stop.
        vocab: token ids or token strings the agent may emit (default: the whole vocabulary).
        obs_type: ``"multidiscrete"`` or ``"box"`` (float32).
        stop_strings: a turn ends when its decoded text (stripped) ends with one of these.
        eos_token_id: the end-of-turn token (default: ``tokenizer.eos_token_id``).

    See the module docstring for the exact spaces.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        env: gym.Env,
        tokenizer: Any,
        *,
        window: int = 32,
        max_turn_tokens: int = 64,
        vocab: Sequence[int | str] | None = None,
        obs_type: str = "multidiscrete",
        stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
        eos_token_id: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}.")
        if not isinstance(max_turn_tokens, int) or max_turn_tokens < 1:
            raise ValueError(f"max_turn_tokens must be a positive int, got {max_turn_tokens!r}.")
        if obs_type not in ("multidiscrete", "box"):
            raise ValueError(f"obs_type must be 'multidiscrete' or 'box', got {obs_type!r}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}.")
        self.env = env
        self.tokenizer = load_tokenizer(tokenizer)
        eos = self.tokenizer.eos_token_id if eos_token_id is None else int(eos_token_id)
        if eos is None:
            raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id=... (the token that ends a turn).")
        self.eos_token_id = int(eos)
        self.token_ids: list[int] = _resolve_vocab(self.tokenizer, vocab, self.eos_token_id)
        self._index_of = {tid: i for i, tid in enumerate(self.token_ids)}
        self.window = window
        self.max_turn_tokens = max_turn_tokens
        self.stop_strings = tuple(stop_strings)
        self.obs_type = obs_type
        self.render_mode = render_mode

        n = len(self.token_ids)
        self.unk_symbol, self.pad_symbol = n, n + 1
        self.action_space = spaces.Discrete(n)
        if obs_type == "multidiscrete":
            self.observation_space = spaces.MultiDiscrete(np.full(window, n + 2, dtype=np.int64))
        else:
            self.observation_space = spaces.Box(0.0, float(n + 1), shape=(window,), dtype=np.float32)

        self._stream: list[int] = []
        self._turn: list[int] = []
        self._done = True

    # ------------------------------------------------------------------ helpers
    @property
    def vocab_size(self) -> int:
        """Number of actions ``V``."""
        return len(self.token_ids)

    def symbols(self, text: str) -> list[int]:
        """Observation symbols of ``text`` (action index, or the unknown symbol for out-of-vocabulary tokens)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return [self._index_of.get(t, self.unk_symbol) for t in ids]

    def _obs(self) -> np.ndarray:
        tail = self._stream[-self.window:]
        arr = np.full(self.window, self.pad_symbol, dtype=np.int64)
        if tail:
            arr[self.window - len(tail):] = tail
        return arr if self.obs_type == "multidiscrete" else arr.astype(np.float32)

    def _turn_text(self) -> str:
        return self.tokenizer.decode(self._turn, skip_special_tokens=False)

    def _turn_ended(self, token_id: int) -> bool:
        if token_id == self.eos_token_id or len(self._turn) >= self.max_turn_tokens:
            return True
        text = self._turn_text().rstrip()
        return any(text.endswith(s) for s in self.stop_strings)

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        text, info = self.env.reset(seed=seed, options=options)
        self._stream = self.symbols(text)
        self._turn = []
        self._done = False
        return self._obs(), dict(info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("step() called on a finished episode (or before reset()). Call reset() first.")
        try:
            index = int(action)
        except (TypeError, ValueError):
            raise TypeError(f"action must be an int token index in [0, {self.vocab_size}), got {action!r}.") from None
        if not 0 <= index < self.vocab_size or np.ndim(action) != 0:
            raise ValueError(f"action must be one int in [0, {self.vocab_size}), got {action!r}.")
        token_id = self.token_ids[index]
        self._turn.append(token_id)
        self._stream.append(index)
        if not self._turn_ended(token_id):
            return self._obs(), 0.0, False, False, {"turn_tokens": len(self._turn)}

        ids = self._turn[:-1] if token_id == self.eos_token_id else self._turn
        turn_text = self.tokenizer.decode(ids, skip_special_tokens=False)
        self._turn = []
        text, reward, terminated, truncated, info = self.env.step(turn_text)
        info = dict(info)
        info["turn_text"] = turn_text
        if terminated or truncated:
            self._done = True
        else:
            self._stream.extend(self.symbols(text))
        self._stream = self._stream[-self.window:]  # only the tail is ever observed
        return self._obs(), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        inner = self.env.render() if hasattr(self.env, "render") else None
        pending = self._turn_text() if self._turn else ""
        text = (inner or "") + (f"\n[agent, unfinished turn] {pending}" if pending else "")
        return text

    def close(self) -> None:
        self.env.close()

    def __repr__(self) -> str:
        return f"TokenWrapper(vocab={self.vocab_size}, window={self.window}, max_turn_tokens={self.max_turn_tokens})"
