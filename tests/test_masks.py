"""The (B, T) action mask: a hand-written 3-turn episode (integer token ids, no tokenizer needed)."""

from __future__ import annotations

import doctest

import promptr1.agents.masks as masks_mod
import pytest
import torch
from promptr1.agents.losses import policy_loss, token_logprobs
from promptr1.agents.masks import build_action_mask, pad_sequences

# Episode 0, three agent turns (ids are arbitrary integers standing for tokens):
#   prompt (system + question, template)  101 102 103       -> 0 0 0
#   agent turn 1 (think + prompt)          11 12 13 14       -> 1 1 1 1
#   env reply 1 (template + response)      201 202           -> 0 0
#   agent turn 2                           21 22             -> 1 1
#   env reply 2                            203               -> 0
#   agent turn 3 (think + answer)          31 32 33          -> 1 1 1
# 15 tokens.
# Episode 1, answers at once: prompt 101 102 103, agent 41 42 -> 5 tokens, then 10 pads.
EPISODES = [
    [
        ([101, 102, 103], False),
        ([11, 12, 13, 14], True),
        ([201, 202], False),
        ([21, 22], True),
        ([203], False),
        ([31, 32, 33], True),
    ],
    [([101, 102, 103], False), ([41, 42], True)],
]


def test_doctests() -> None:
    result = doctest.testmod(masks_mod)
    assert result.attempted > 0 and result.failed == 0


def test_three_turn_episode_known_answer() -> None:
    ids, act, att = build_action_mask(EPISODES, pad_id=0)
    assert ids.shape == act.shape == att.shape == (2, 15)
    assert ids.dtype == act.dtype == att.dtype == torch.long
    assert ids.tolist() == [
        [101, 102, 103, 11, 12, 13, 14, 201, 202, 21, 22, 203, 31, 32, 33],
        [101, 102, 103, 41, 42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
    assert act.tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
    assert att.tolist() == [[1] * 15, [1] * 5 + [0] * 10]
    # 4 + 2 + 3 agent tokens in episode 0, 2 in episode 1
    assert act.sum(dim=1).tolist() == [9, 2]


def test_pad_to_and_pad_id() -> None:
    ids, act, att = build_action_mask(EPISODES, pad_to=18, pad_id=7)
    assert ids.shape == (2, 18)
    assert ids[0, 15:].tolist() == [7, 7, 7] and ids[1, 5:].tolist() == [7] * 13
    assert act[:, 15:].sum() == 0 and att[0].tolist() == [1] * 15 + [0] * 3
    with pytest.raises(ValueError, match="has 15 tokens but pad_to=10"):
        build_action_mask(EPISODES, pad_to=10)


def test_per_token_pairs_and_tensor_segments() -> None:
    # the same episode 1 written token by token, and with tensors
    per_token = [[(101, False), (102, False), (103, False), (41, True), (42, True)]]
    tensors = [[(torch.tensor([101, 102, 103]), False), (torch.tensor([41, 42]), True)]]
    expected = build_action_mask([EPISODES[1]])
    for form in (per_token, tensors):
        for got, want in zip(build_action_mask(form), expected):
            assert torch.equal(got, want)


def test_empty_batch_and_empty_segments() -> None:
    ids, act, att = build_action_mask([])
    assert ids.shape == act.shape == att.shape == (0, 0)
    ids, act, _ = build_action_mask([[([], True), ([5], False)]])
    assert ids.tolist() == [[5]] and act.tolist() == [[0]]


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ([[([1, 2], "yes")]], ValueError, "is_agent must be True or False"),
        ([[([1, -2], True)]], ValueError, "non-negative ints"),
        ([[("hello", True)]], TypeError, "Tokenize text once"),
        ([[([1, 2],)]], ValueError, r"segments\[0\]\[0\] must be a \(token_ids, is_agent\) pair"),
        ("abc", TypeError, "one entry per episode"),
    ],
)
def test_bad_input_errors(bad, error, match) -> None:
    with pytest.raises(error, match=match):
        build_action_mask(bad)


def test_pad_sequences() -> None:
    out = pad_sequences([[0.5, -1.0], [2.0]], pad_value=0.0, dtype=torch.float32)
    assert out.tolist() == [[0.5, -1.0], [2.0, 0.0]]


def test_mask_drives_the_loss_gradient_after_the_causal_shift() -> None:
    # logits at position t predict token t + 1: loss on logits[:, :-1], ids[:, 1:], mask[:, 1:]
    ids, act, _ = build_action_mask(EPISODES)
    torch.manual_seed(0)
    logits = torch.randn(2, ids.shape[1], 256, requires_grad=True)
    logp = token_logprobs(logits[:, :-1], ids[:, 1:])  # (B, T-1)
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), act[:, 1:])
    loss.backward()
    has_grad = logits.grad.abs().sum(-1) > 0  # (B, T): which positions' logits got a gradient
    # exactly the positions just before an agent token
    assert torch.equal(has_grad[:, :-1], act[:, 1:].bool())
    assert not has_grad[:, -1].any()
