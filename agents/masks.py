"""The one place that builds the ``(B, T)`` action mask of a multi-turn episode.

An episode is a token sequence made of segments: the prompt (system + question, chat template), then for each
turn the agent's sampled tokens, then the environment LLM's reply wrapped in the template. Only the agent's
sampled tokens are actions: they get mask 1; everything else (prompt, environment replies, template tokens,
padding) gets 0. Token ids are kept exactly as sampled or tokenized once (token-in, token-out; docs/architecture.md, training defaults);
this module never decodes or re-encodes anything.

Padding is on the right. For a causal LM the logits at position ``t`` predict token ``t + 1``, so the loss
uses ``token_logprobs(logits[:, :-1], input_ids[:, 1:])`` with ``action_mask[:, 1:]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Segment", "build_action_mask", "pad_sequences"]

TokenIds = int | Sequence[int] | Tensor
Segment = tuple[TokenIds, bool]
"""``(token_ids, is_agent)``: ``token_ids`` an int, a list of ints or a 1-D tensor; ``is_agent`` True for
tokens the agent sampled."""


def _as_ids(token_ids: TokenIds, where: str) -> list[int]:
    if isinstance(token_ids, Tensor):
        if token_ids.dim() > 1:
            raise ValueError(
                f"{where}: token ids must be an int or a 1-D sequence; got a tensor of shape {tuple(token_ids.shape)}."
            )
        return [int(t) for t in token_ids.reshape(-1).tolist()]
    if (
        isinstance(token_ids, bool)
        or not isinstance(token_ids, (int, Sequence))
        or isinstance(token_ids, str)
    ):
        raise TypeError(
            f"{where}: token ids must be an int, a list of ints or a 1-D tensor; got {type(token_ids).__name__}. "
            "Tokenize text once with the agent's tokenizer and pass the ids."
        )
    ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"{where}: token ids must be non-negative ints; got {t!r}.")
    return ids


def pad_sequences(
    seqs: Sequence[Sequence[int] | Sequence[float] | Tensor],
    *,
    pad_to: int | None = None,
    pad_value: float = 0,
    dtype: torch.dtype = torch.long,
) -> Tensor:
    """Right-pad variable-length 1-D sequences into a ``(B, T)`` tensor, ``T = pad_to or the longest``.

    Useful for per-token values that must line up with :func:`build_action_mask`'s output (e.g. the
    log-probs recorded at sampling time, with 0 for non-agent tokens).

    >>> pad_sequences([[1, 2, 3], [4]], pad_value=-1)
    tensor([[ 1,  2,  3],
            [ 4, -1, -1]])
    """
    rows = [torch.as_tensor(s, dtype=dtype).reshape(-1) for s in seqs]
    longest = max((len(r) for r in rows), default=0)
    T = longest if pad_to is None else pad_to
    if longest > T:
        raise ValueError(
            f"a sequence has {longest} tokens but pad_to={pad_to}; raise pad_to (or None to pad to the longest) "
            "or truncate the episode before building the batch."
        )
    out = torch.full((len(rows), T), pad_value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def build_action_mask(
    segments: Sequence[Sequence[Segment]], pad_to: int | None = None, pad_id: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate each episode's segments; return ``(input_ids, action_mask, attention_mask)``, each ``(B, T)`` long.

    ``segments[b]`` lists episode ``b``'s segments in order, each ``(token_ids, is_agent)``. ``action_mask`` is 1
    exactly on tokens of segments with ``is_agent=True``; ``attention_mask`` is 1 on every real token and 0 on
    the right padding (filled with ``pad_id``). ``T`` is ``pad_to`` or the longest episode.

    A 3-turn episode and a 1-turn one (prompt P, agent turns A, env replies E):

    >>> ids, act, att = build_action_mask([
    ...     [([1, 2], False), ([10, 11], True), ([3], False), ([12], True), ([4, 5], False), ([13, 14], True)],
    ...     [([1, 2], False), ([20], True)],
    ... ])
    >>> ids.tolist()
    [[1, 2, 10, 11, 3, 12, 4, 5, 13, 14], [1, 2, 20, 0, 0, 0, 0, 0, 0, 0]]
    >>> act.tolist()
    [[0, 0, 1, 1, 0, 1, 0, 0, 1, 1], [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]]
    >>> att.tolist()
    [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]]
    """
    if isinstance(segments, (str, bytes)) or not isinstance(segments, Sequence):
        raise TypeError(
            f"segments must be a list (one entry per episode) of lists of (token_ids, is_agent) pairs; got "
            f"{type(segments).__name__}."
        )
    all_ids: list[list[int]] = []
    all_act: list[list[int]] = []
    for b, episode in enumerate(segments):
        ids: list[int] = []
        act: list[int] = []
        for s, seg in enumerate(episode):
            where = f"segments[{b}][{s}]"
            if not isinstance(seg, (tuple, list)) or len(seg) != 2:
                raise ValueError(f"{where} must be a (token_ids, is_agent) pair; got {seg!r}.")
            token_ids, is_agent = seg
            if not isinstance(is_agent, (bool, int)) or isinstance(is_agent, int) and is_agent not in (0, 1):
                raise ValueError(f"{where}: is_agent must be True or False; got {is_agent!r}.")
            seg_ids = _as_ids(token_ids, where)
            ids.extend(seg_ids)
            act.extend([int(bool(is_agent))] * len(seg_ids))
        all_ids.append(ids)
        all_act.append(act)
    input_ids = pad_sequences(all_ids, pad_to=pad_to, pad_value=pad_id)  # (B, T)
    action_mask = pad_sequences(all_act, pad_to=pad_to, pad_value=0)  # (B, T)
    attention_mask = pad_sequences([[1] * len(i) for i in all_ids], pad_to=pad_to, pad_value=0)  # (B, T)
    return input_ids, action_mask, attention_mask
